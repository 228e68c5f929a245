"""Band masks on the ``TORCH`` and ``MATH`` backends: torch's own causal flag where it is one, a chunked computation
for sliding windows (so a window costs ``L x window``, not ``L x S``), the materialised mask otherwise.

Chunks: the queries are cut into chunks of ``C`` rows; the rows of a chunk starting at ``c0`` can only see the keys
``[c0 + shift - left, c0 + C - 1 + shift + right]``, a slice of ``C + left + right`` keys, taken as overlapping
windows (``unfold``) of one zero-padded copy of the keys. Within that slice the band is the same for every chunk
(row ``r`` sees slice columns ``r .. r + left + right``), so one dense 4-D call over (batch x chunk, head) with a
``(chunks, C, C + left + right)`` mask (the band, and the slice's columns that fall outside the keys) computes every
chunk at once. The mask is additive in the queries' dtype (torch converts a bool mask on every call) and kept
between calls of the same sizes; ``C`` is about half the window (`windowed_attention`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .masks import Band, band_of

__all__ = ["windowed_attention", "with_bands"]

DenseAttention = Callable[..., torch.Tensor]
CHUNK = 128


def windowed_attention(
    attend: DenseAttention, query, key, value, band: Band, dropout_p: float, scale, enable_gqa: bool
) -> torch.Tensor | None:
    """The band of a sliding window chunk by chunk (see the module), or None where that saves no work (a side
    unbounded, or a window about as wide as the keys)."""
    if band.left is None or band.right is None:
        return None
    L, S = query.size(-2), key.size(-2)
    width = band.left + band.right + 1
    # a chunk sees C + width - 1 keys: a smaller chunk computes fewer masked pairs, but each key is read by more
    # chunks (the slices overlap; backward sums their gradients). Measured at L = 4096, head dim 32, forward +
    # backward: window 128 fastest at C = 64 (1.18x C = 128; C = 32 1.13x), window 512 at C = 128 (C = 64 0.88x,
    # C = 32 0.68x): C about half the window
    chunk = min(CHUNK, 1 << max(5, (width // 2).bit_length() - 1), max(16, L))
    span = chunk + width - 1  # keys one chunk sees
    if 2 * span > S:
        return None
    batch_shape = query.shape[:-3] if query.dim() >= 3 else ()
    q, k, v = (t.reshape(-1, *t.shape[-3:]) if t.dim() >= 3 else t[None, None] for t in (query, key, value))
    if enable_gqa and k.size(1) != q.size(1):  # heads move off dim -3 below: repeat them first
        k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))
    chunks = -(-L // chunk)
    if chunks * chunk != L:
        q = torch.nn.functional.pad(q, (0, 0, 0, chunks * chunk - L))  # (B, H, chunks * C, E)
    first = band.shift(L, S) - band.left  # key index of chunk 0's first slice column
    # batch and chunks as one batch dim: torch's SDPA takes its fused CPU kernel for 4-D inputs only (5-D ones go
    # to the math path, measured 2-3x slower here)
    n = q.size(0)
    q = q.unflatten(2, (chunks, chunk)).transpose(1, 2).flatten(0, 1)  # (B * chunks, H, C, E)
    # the keys' slices as overlapping windows of one zero-padded copy (a view where B = 1: no gather)
    pad_left, pad_right = max(0, -first), max(0, first + (chunks - 1) * chunk + span - S)
    k, v = (
        _pad_keys(t, pad_left, pad_right)[:, :, first + pad_left :]
        .unfold(2, span, chunk)[:, :, :chunks]
        .transpose(-1, -2)
        .transpose(1, 2)
        .flatten(0, 1)
        for t in (k, v)
    )  # (B * chunks, H, span, *)
    mask = _chunk_mask(chunks, chunk, span, width, first, S, q.dtype, q.device)  # (chunks, 1, C, span)
    if n > 1:
        mask = mask.repeat(n, 1, 1, 1)  # (B * chunks, 1, C, span)
    out = attend(q, k, v, mask, dropout_p, False, scale, False)  # (B * chunks, H, C, Ev)
    out = out.unflatten(0, (n, chunks)).transpose(1, 2).flatten(2, 3)[:, :, :L]  # (B, H, L, Ev)
    return out.reshape(*batch_shape, *out.shape[-3:]) if query.dim() >= 3 else out[0, 0]


def _pad_keys(t: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``t (B, H, S, E)`` with ``left``/``right`` zero rows around its keys: one copy (``F.pad`` fills the whole
    result with zeros first, then copies: measured as much time again)."""
    if not (left or right):
        return t
    zeros = [t.new_zeros(*t.shape[:2], n, t.size(-1)) for n in (left, right)]
    return torch.cat([zeros[0], t, zeros[1]], dim=2)


def _chunk_mask(chunks: int, chunk: int, span: int, width: int, first: int, S: int, dtype, device) -> torch.Tensor:
    """The chunks' additive mask ``(chunks, 1, C, span)``: 0 inside the band and the keys, -inf elsewhere. Additive,
    in the queries' dtype, as torch's kernels take it (a bool mask they convert on every call); kept between calls
    with the same sizes where it is small, as every layer of a model calls with the same sizes."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or chunks * chunk * span > _CACHED_MASK_ELEMENTS:
        return _build_chunk_mask(chunks, chunk, span, width, first, S, dtype, device)
    return _cached_chunk_mask(chunks, chunk, span, width, first, S, dtype, device)


def _build_chunk_mask(chunks, chunk, span, width, first, S, dtype, device) -> torch.Tensor:
    cols = first + torch.arange(chunks, device=device)[:, None] * chunk + torch.arange(span, device=device)
    inside = (cols >= 0) & (cols < S)  # (chunks, span): slice columns that are keys
    rel = torch.arange(span, device=device)[None, :] - torch.arange(chunk, device=device)[:, None]
    keep = ((rel >= 0) & (rel < width))[None] & inside[:, None, :]  # (chunks, C, span)
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep, float("-inf"))[:, None]


_CACHED_MASK_ELEMENTS = 1 << 22  # 16 MB in float32: a window of 1,024 keys at L = 4,096
_cached_chunk_mask = functools.lru_cache(maxsize=8)(_build_chunk_mask)


def with_bands(attend: DenseAttention, chunked: bool) -> DenseAttention:
    """``attend`` (an F.sdpa-like function of tensors) taking band masks too: upper-left causal as ``is_causal``,
    windows chunked (with ``chunked``), anything else as the materialised bool mask."""

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        band = band_of(attn_mask)
        if band is None:
            return attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        if band.is_causal_upper_left():
            return attend(query, key, value, None, dropout_p, True, scale, enable_gqa)
        if chunked:
            out = windowed_attention(attend, query, key, value, band, dropout_p, scale, enable_gqa)
            if out is not None:
                return out
        mask = band.materialize(query.size(-2), key.size(-2), query.device)
        return attend(query, key, value, mask, dropout_p, False, scale, enable_gqa)

    attention.__name__ = getattr(attend, "__name__", "attention")
    return attention
