"""Backend dispatch shared by the functional entry points: which backend serves a call, and the
dense implementation of each."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from . import triton as fused
from .backends import Backend, NoBackendAvailableError, default_order, enabled_backends
from .dropout_masks import dropout_attention, fast_path
from .preferences import torch_first, torch_priority
from .reference import attention_reference
from .window import with_bands


def torch_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    guard_empty_rows: bool | None = None,
) -> torch.Tensor:
    """``Backend.TORCH`` on dense tensors.

    torch's CPU kernels return 0 for a row with nothing to attend to (checked by the tests); its CUDA
    kernels are not documented to, so elsewhere such rows attend to everything and are then zeroed:
    the kernel never sees an all ``-inf`` row, and the zeroed rows pass no gradient back. Where a GPU sweep
    measured the call's case, torch tries its fastest kernel first (`kernels.preferences.torch_priority`).
    """
    if guard_empty_rows is None:
        guard_empty_rows = query.device.type != "cpu"
    if attn_mask is not None and attn_mask.dim() < 2:  # torch indexes dim -2 of the mask: give it one
        attn_mask = attn_mask.reshape((1,) * (2 - attn_mask.dim()) + tuple(attn_mask.shape))
    empty = None
    if guard_empty_rows and attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            empty = ~attn_mask.any(dim=-1, keepdim=True)  # (..., L, 1)
            attn_mask = attn_mask | empty
        else:
            empty = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)
            attn_mask = attn_mask.masked_fill(empty, 0.0)
    with torch_priority(query, key, attn_mask, is_causal, dropout_p) or contextlib.nullcontext():
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
    return out if empty is None else out.masked_fill(empty, 0.0)


def torch_packed(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``Backend.TORCH`` on a bucket of packed sequences: `torch_sdpa`, except dropout where `kernels.dropout` draws
    its own masks (CPU, eager): torch's CPU kernels take dropout in their math path only, whose ``bernoulli_``
    draws took about as long as the rest of the attention; `dropout_attention` runs the same steps with cheaper
    masks. Packed sequences cannot follow torch's random stream anyway (their elements are not where a padded
    batch has them)."""
    if dropout_p > 0 and fast_path(dropout_p, query.device):
        return dropout_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


DENSE = {  # band masks (`kernels.masks`): the fused kernels take them as they are, the others through with_bands
    Backend.TORCH: with_bands(torch_sdpa, chunked=True),
    Backend.MATH: with_bands(attention_reference, chunked=False),
    Backend.TRITON: fused.attention,
}
PACKED = {**DENSE, Backend.TORCH: with_bands(torch_packed, chunked=True)}  # the buckets of packed sequences


def unavailable_reasons(
    backend: Backend,
    query: torch.Tensor,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    varlen: bool = False,
    decode: bool = False,
    dropout_p: float = 0.0,
    longest: tuple[int, int] | None = None,
) -> list[str]:
    if backend is Backend.TRITON:
        return fused.unavailable_reasons(query, key, value, attn_mask, varlen, decode, dropout_p, longest)
    return []  # TORCH and MATH serve every input that passed validation


def select(
    query: torch.Tensor,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    varlen: bool = False,
    decode: bool = False,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    longest: tuple[int, int] | None = None,
    torch_reason: str | None = None,
) -> tuple[Backend, dict[Backend, list[str]]]:
    """The first enabled backend that can serve the inputs, and the reasons of those tried before it (``decode``:
    a `kernels.decode_attention` call whose inputs require grad, which the fused decode kernel cannot serve;
    ``longest``: a variable-length or nested call's longest query and key sequence, where its lengths were
    read; ``torch_reason``: the caller's reason to try ``TORCH`` first, e.g. `kernels.torch_varlen.first`).

    Without an `sdpa_kernel` block, the default order applies, except where a GPU measured ``TRITON`` slower than
    torch for such a call (`kernels.preferences`, or ``torch_reason``): ``TORCH`` goes first, and the reason is
    recorded."""
    order = enabled_backends()
    skipped: dict[Backend, list[str]] = {}
    if order is None:
        order = default_order(query.device.type)
        reason = torch_reason or (None if varlen else torch_first(query, key, attn_mask, is_causal, dropout_p))
        if reason is not None:
            order = (Backend.TORCH, Backend.TRITON, Backend.MATH)
            skipped[Backend.TRITON] = [f"could run, but TORCH goes first: {reason}"]
    for backend in order:
        reasons = unavailable_reasons(backend, query, key, value, attn_mask, varlen, decode, dropout_p, longest)
        if not reasons:
            return backend, skipped
        skipped[backend] = skipped.get(backend, []) + reasons
    lines = [f"  {b.name}: " + "; ".join(r) for b, r in skipped.items()]
    raise NoBackendAvailableError(
        "no enabled attention backend can serve these inputs:\n" + "\n".join(lines) + "\n"
        "Enable another backend with kernels.sdpa_kernel([...]); kernels.explain(q, k, v) shows the choice."
    )


def profiled(entry: str, backend: Backend) -> contextlib.AbstractContextManager:
    """A ``torch.profiler`` range named ``fusedlayers::<entry>[<BACKEND>]``, so profiler tables show which
    attention ran where. Skipped while ``torch.compile`` traces (it would drop the range with a warning), and while
    no profiler records: entering and leaving a range are two dispatcher calls, ~40-60 us a call on CPU, which
    was a third of a cached decoding step's attention at batch 1."""
    if torch.compiler.is_compiling() or not getattr(torch.autograd.profiler, "_is_profiler_enabled", True):
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"fusedlayers::{entry}[{backend.name}]")
