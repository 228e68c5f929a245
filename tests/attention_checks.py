"""Shared checks: run an attention function forward and backward, and compare it with torch and float64.

The rule (DESIGN.md): a backend's error against the float64 reference may be at most ~2x torch's own
error at the same precision, plus a small relative floor, for the output and for every gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import Backend
from kernels.dispatch import unavailable_reasons
from kernels.reference import attention_reference

# Relative floor on the error against float64, per dtype (scaled by the reference's largest magnitude).
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# The most any result may differ from float64 at all, relative likewise: this also catches a reference
# and a backend that are wrong together (torch's own error then exceeds it).
LIMIT = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# Every backend on CPU tensors: without a GPU, TRITON runs under the Triton interpreter (tests/conftest.py);
# on a GPU machine it runs the compiled kernels in `pytest -m cuda` instead, and is skipped here, saying why.
_CPU_REASONS = unavailable_reasons(Backend.TRITON, torch.empty(1, 1, 1))
_TRITON_ON_CPU = pytest.param(
    Backend.TRITON, marks=pytest.mark.skipif(bool(_CPU_REASONS), reason="TRITON: " + "; ".join(_CPU_REASONS))
)
CPU_BACKENDS = [Backend.TORCH, Backend.MATH, _TRITON_ON_CPU]
VARLEN_BACKENDS = CPU_BACKENDS  # nested / packed inputs: the same three


def skip_if_unavailable(backend: Backend, query: torch.Tensor, **inputs) -> None:
    """Skip, saying why, where a backend cannot serve these inputs by design (e.g. TRITON and float64)."""
    reasons = unavailable_reasons(backend, query, **inputs)
    if reasons:
        pytest.skip(f"{backend.name} cannot serve this input: " + "; ".join(reasons))


@contextlib.contextmanager
def only(backend: Backend) -> Iterator[None]:
    with kernels.sdpa_kernel([backend]):
        yield


def leaf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_(True)


def forward_backward(
    fn: Callable[..., torch.Tensor],
    tensors: dict[str, torch.Tensor | None],
    grad_out: torch.Tensor,
    dtype: torch.dtype,
    mask_grad: bool = True,
    **kwargs: object,
) -> dict[str, torch.Tensor]:
    """Outputs and gradients of ``fn(query, key, value, attn_mask=..., **kwargs)`` in ``dtype``.

    A float mask is a leaf too (with ``mask_grad``), so its gradient is compared; a bool mask is passed as is.
    """
    leaves = {}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype == torch.bool:
            leaves[name] = t
        elif name == "attn_mask" and not mask_grad:
            leaves[name] = t.detach().to(dtype)
        else:
            leaves[name] = leaf(t, dtype)
    out = fn(leaves["query"], leaves["key"], leaves["value"], attn_mask=leaves.get("attn_mask"), **kwargs)
    out.backward(grad_out.to(out))  # dtype and device of the output (CUDA tests)
    result = {"out": out.detach()}
    for name, t in leaves.items():
        if t.requires_grad:
            result["grad_" + name] = t.grad
    return result


def torch_sdpa(query, key, value, attn_mask=None, **kwargs):
    """torch's SDPA; a mask of rank < 2 gets leading 1s first (torch indexes its dim -2)."""
    if attn_mask is not None and attn_mask.dim() < 2:
        attn_mask = attn_mask.reshape((1,) * (2 - attn_mask.dim()) + tuple(attn_mask.shape))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, **kwargs)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_reference(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtype
) -> None:
    """Each output/gradient of ``ours`` within 2x torch's (``theirs``) error against ``ref`` (float64)."""
    assert ours.keys() == ref.keys(), (ours.keys(), ref.keys())
    for name, r in ref.items():
        assert torch.isfinite(ours[name]).all(), f"{name} has NaN/inf"
        err, base = max_error(ours[name], r), max_error(theirs[name], r)
        magnitude = max(1.0, r.abs().max().item() if r.numel() else 1.0)
        assert err <= 2 * base + FLOOR[dtype] * magnitude, f"{name}: error {err:.3g}, torch's {base:.3g} ({dtype})"
        assert max(err, base) <= LIMIT[dtype] * magnitude, f"{name}: error {err:.3g}, torch's {base:.3g} ({dtype})"


def compare_backend(
    backend: Backend,
    tensors: dict[str, torch.Tensor | None],
    dtype: torch.dtype = torch.float32,
    **kwargs: object,
) -> dict[str, torch.Tensor]:
    """Run ``backend`` in ``dtype``, torch's SDPA in ``dtype`` and the reference in float64; compare."""
    q = tensors["query"]
    skip_if_unavailable(backend, q.to(dtype), value=tensors["value"])
    shape_out = (*q.shape[:-1], tensors["value"].size(-1))
    grad_out = torch.randn(shape_out, dtype=torch.float64)
    mask_grad = backend is not Backend.TRITON  # the fused kernels do not return a mask gradient (by design)
    with only(backend):
        ours = forward_backward(
            kernels.scaled_dot_product_attention, tensors, grad_out, dtype, mask_grad=mask_grad, **kwargs
        )
    theirs = forward_backward(torch_sdpa, tensors, grad_out, dtype, mask_grad=mask_grad, **kwargs)
    ref = forward_backward(attention_reference, tensors, grad_out, torch.float64, mask_grad=mask_grad, **kwargs)
    assert_close_to_reference(ours, theirs, ref, dtype)
    return ours


def compare_band(tensors: dict[str, torch.Tensor], band, dtype: torch.dtype, **kwargs: object) -> None:
    """`compare_backend` for ``Backend.TRITON`` with a band mask (`kernels.sliding_window`, ...): ours gets the band,
    torch and the float64 reference its bool mask. Every row must see a key (torch gives NaN for the others)."""
    q = tensors["query"]
    dense = {**tensors, "attn_mask": band.materialize(device=q.device)}
    grad_out = torch.randn(*q.shape[:-1], tensors["value"].size(-1), dtype=torch.float64, device=q.device)

    def with_band(query, key, value, attn_mask=None, **kw):
        return kernels.scaled_dot_product_attention(query, key, value, attn_mask=band, **kw)

    with only(Backend.TRITON):
        ours = forward_backward(with_band, tensors, grad_out, dtype, **kwargs)
    theirs = forward_backward(torch_sdpa, dense, grad_out, dtype, **kwargs)
    ref = forward_backward(attention_reference, dense, grad_out, torch.float64, **kwargs)
    assert_close_to_reference(ours, theirs, ref, dtype)


def random_qkv(
    batch: tuple[int, ...],
    heads: int,
    q_len: int,
    k_len: int,
    head_dim: int,
    head_dim_v: int | None = None,
    kv_heads: int | None = None,
) -> dict[str, torch.Tensor]:
    """Fresh normal inputs in float64 (cast per test); ``heads=0`` means no head dimension."""
    kv_heads = heads if kv_heads is None else kv_heads
    hq = (heads,) if heads else ()
    hk = (kv_heads,) if heads else ()
    return {
        "query": torch.randn(*batch, *hq, q_len, head_dim, dtype=torch.float64),
        "key": torch.randn(*batch, *hk, k_len, head_dim, dtype=torch.float64),
        "value": torch.randn(*batch, *hk, k_len, head_dim_v or head_dim, dtype=torch.float64),
    }
