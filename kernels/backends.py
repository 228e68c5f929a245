"""Backend selection for `kernels.scaled_dot_product_attention`.

Three backends can serve an attention call:

- ``Backend.TRITON``: this repository's fused Triton kernels (CUDA tensors; CPU tensors only under the
  Triton interpreter, which exists for tests).
- ``Backend.TORCH``: ``torch.nn.functional.scaled_dot_product_attention``, which picks flash / efficient /
  cuDNN / math itself. Nested (jagged) inputs are served by torch's dense fused kernel per sequence.
- ``Backend.MATH``: the explicit reference in `kernels.reference` (float64-capable, the tests' oracle).

The choice is restricted with the `sdpa_kernel` context manager. The state is kept in a
``threading.local``: each thread has its own selection, and ``torch.compile`` can trace (and guard on) it,
which it cannot do for a ``contextvars.ContextVar``.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterable, Iterator

__all__ = ["Backend", "NoBackendAvailableError", "enabled_backends", "sdpa_kernel"]


class Backend(enum.Enum):
    """An implementation of scaled dot-product attention; see the module docstring."""

    TRITON = "triton"
    TORCH = "torch"
    MATH = "math"


class NoBackendAvailableError(RuntimeError):
    """Raised when none of the enabled backends can serve the inputs; the message lists each one's reasons."""


_state = threading.local()


def _as_backend(value: object) -> Backend:
    if isinstance(value, Backend):
        return value
    if isinstance(value, str):
        try:
            return Backend[value.upper()]
        except KeyError:
            pass
    names = ", ".join(f"Backend.{b.name}" for b in Backend)
    raise TypeError(f"sdpa_kernel: unknown backend {value!r}; pass one or a list of {names}")


def enabled_backends() -> tuple[Backend, ...] | None:
    """The backends allowed by the innermost `sdpa_kernel` of this thread, in priority order,
    or ``None`` outside any ``sdpa_kernel`` block (the device's default order applies)."""
    return getattr(_state, "backends", None)


def default_order(device_type: str) -> tuple[Backend, ...]:
    """Backends tried when no `sdpa_kernel` restricts the choice.

    On CUDA the fused kernels come first. On CPU they run only under the Triton interpreter, which is
    orders of magnitude slower than torch, so they are tried only when selected explicitly.
    """
    if device_type == "cuda":
        return (Backend.TRITON, Backend.TORCH, Backend.MATH)
    return (Backend.TORCH, Backend.MATH)


@contextlib.contextmanager
def sdpa_kernel(backends: Backend | str | Iterable[Backend | str]) -> Iterator[tuple[Backend, ...]]:
    """Restrict which backends `kernels.scaled_dot_product_attention` may use inside the block.

    Args:
        backends: one backend or a list of them (``Backend`` members, or their names as strings), in
            priority order: the first one that can serve a call runs it. An explicit ``Backend.TRITON``
            is tried on CPU tensors too (under the Triton interpreter).

    As with ``torch.nn.attention.sdpa_kernel``, an inner block replaces the selection of an outer one
    (it does not intersect them), and the previous selection comes back on exit, also on an exception.
    The selection belongs to the current thread only.

    Example, run by the test suite:

    ```python
    import torch
    import kernels
    from kernels import Backend

    q = k = v = torch.randn(2, 4, 16, 8)  # (B, H, L, E)
    with kernels.sdpa_kernel([Backend.MATH]):
        out = kernels.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 4, 16, 8)
    ```
    """
    if isinstance(backends, (Backend, str)):
        backends = [backends]
    chosen: list[Backend] = []
    for item in backends:
        backend = _as_backend(item)
        if backend not in chosen:
            chosen.append(backend)
    if not chosen:
        raise ValueError("sdpa_kernel: got an empty list of backends; pass at least one, e.g. [Backend.TORCH]")
    previous = enabled_backends()
    _state.backends = tuple(chosen)
    try:
        yield _state.backends
    finally:
        _state.backends = previous
