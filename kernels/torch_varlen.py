"""torch's own variable-length attention (``torch.nn.attention.varlen.varlen_attn``: FlashAttention on CUDA) as the
``TORCH`` backend's path for packed sequences, where it can serve the call.

Measured on an H200 (2026-11-28; docs/benchmarks.md, "GPU runs"): 64 sequences of at most 1,024 tokens (~50%
padding), 16 heads, head dim 128, float16, forward and backward: ``varlen_attn`` 2.82 ms, the fused ``TRITON``
kernel through a nested tensor 10.49 ms, ``TORCH``'s buckets of padded sequences 14.20 ms. So on CUDA, where it
serves the call, a variable-length or nested call tries ``TORCH`` first (`first`), and ``TORCH`` runs it as one
``varlen_attn`` call instead of the buckets.

It serves: CUDA, float16/bfloat16, no dropout (it has none), no mask but causality, and causal only where every
sequence has as many queries as keys (its causal mask is aligned bottom-right, ours top-left: they agree only
there), at least one key per sequence (our contract: zeros), head dims it takes (a multiple of 8, at most 256,
values as wide as keys); grouped heads and a non-default scale where the installed torch's signature has them.
Its signature moved between releases (2.10: ``is_causal``; later: ``window_size``), so it is read, not assumed; a
call it refuses anyway (an error from torch) switches this path off for the process with a warning, and the
buckets run as before.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable

import torch

__all__ = ["attention", "first", "reasons"]

DEVICE_TYPES = ("cuda",)  # flash on CUDA only (tests widen it with a stand-in)
_broken: list[str] = []  # the error that switched the path off, once


@functools.lru_cache(maxsize=1)
def _function() -> tuple[Callable, frozenset[str]] | None:
    """``varlen_attn`` and its parameter names, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def reasons(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: object,
    dropout_p: float,
    scale: float | None,
    enable_gqa: bool,
) -> list[str]:
    """Why ``varlen_attn`` cannot serve this call (empty: it can, lengths permitting, `length_reasons`).
    ``query (.., H, .., E)``-shaped: packed ``(T, H, E)`` or nested ``(B, H, j, E)`` (heads at dim 1)."""
    found = _function()
    if found is None:
        return ["torch has no torch.nn.attention.varlen (torch 2.10 and later)"]
    _, params = found
    out = []
    if query.device.type not in DEVICE_TYPES:
        out.append("torch's varlen_attn runs on CUDA only")
    if _broken:
        out.append(f"switched off after an error: {_broken[0]}")
    if query.dtype not in (torch.float16, torch.bfloat16):
        out.append(f"torch's varlen_attn takes float16/bfloat16, not {query.dtype}")
    if dropout_p > 0:
        out.append("torch's varlen_attn has no dropout")
    if attn_mask is not None:
        out.append("torch's varlen_attn takes no mask (causality only)")
    head_dim = query.size(-1)
    if head_dim % 8 or head_dim > 256 or value.size(-1) != head_dim:
        out.append(f"torch's varlen_attn takes head dims that are multiples of 8 up to 256, equal for values "
                   f"(got {head_dim} and {value.size(-1)})")  # fmt: skip
    if query.size(1) != key.size(1) and not (enable_gqa and "enable_gqa" in params):
        out.append("grouped heads: this torch's varlen_attn has no enable_gqa")
    if scale is not None and "scale" not in params and not math.isclose(scale, head_dim**-0.5):
        out.append("a non-default scale: this torch's varlen_attn has no scale")
    return out


def length_reasons(q_lens: list[int], k_lens: list[int], is_causal: bool) -> list[str]:
    """What the lengths rule out: a sequence without keys, causal with other query than key lengths."""
    out = []
    if any(k == 0 < q for q, k in zip(q_lens, k_lens, strict=True)):
        out.append("a sequence has no keys (torch's varlen_attn does not promise zeros there)")
    if is_causal and q_lens != k_lens:
        out.append("causal with other query than key lengths (torch's varlen_attn aligns bottom-right)")
    return out


def first(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: object,
    dropout_p: float,
    scale: float | None,
    enable_gqa: bool,
) -> str | None:
    """The reason to try ``TORCH`` before ``TRITON`` for a variable-length or nested call, or None (always None
    while tracing: no lengths are read then, and ``varlen_attn`` needs them)."""
    if torch.compiler.is_compiling() or query.device.type not in DEVICE_TYPES:
        return None  # before anything else: the signature's inspection is nothing to trace
    if reasons(query, key, value, attn_mask, dropout_p, scale, enable_gqa):
        return None
    return (
        "torch's varlen_attn serves this call, measured 3.0x faster than the fused kernel on an H200 (2026-11-28, "
        "64 sequences of at most 1k tokens, d=128, float16, forward and backward, packed tensors)"
    )


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    q_lens: list[int],
    k_lens: list[int],
    *,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    attn_mask: object = None,
) -> torch.Tensor | None:
    """``varlen_attn`` on packed ``query (Tq, H, E)``, ``key``/``value (Tk, Hk, E)`` with offsets ``cu_q``/``cu_k
    (B + 1,)`` and the lengths they hold -> ``(Tq, H, E)``; None where it cannot serve the call (`reasons`,
    `length_reasons`) or torch refused it (the path is then off for the process, with a warning)."""
    if reasons(query, key, value, attn_mask, dropout_p, scale, enable_gqa) or length_reasons(q_lens, k_lens, is_causal):
        return None
    fn, params = _function()
    options: dict = {}
    if is_causal:
        options.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
    if scale is not None and "scale" in params:
        options["scale"] = scale
    if query.size(1) != key.size(1):
        options["enable_gqa"] = True
    cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)  # on the device: no host copy
    try:
        return fn(query, key, value, cu_q, cu_k, max(q_lens, default=0), max(k_lens, default=0), **options)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
        _broken.append(str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        warnings.warn(
            f"torch's varlen_attn refused a call ({_broken[0]}); TORCH runs packed sequences in padded buckets "
            "from now on in this process",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
