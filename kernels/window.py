"""Band masks on the ``TORCH`` and ``MATH`` backends: torch's own causal flag where it is one, a chunked computation
for sliding windows (so a window costs ``L x window``, not ``L x S``), the materialised mask otherwise.

Chunks: the queries are cut into chunks of ``C`` rows; the rows of a chunk starting at ``c0`` can only see the keys
``[c0 + shift - left, c0 + C - 1 + shift + right]``, a slice of ``C + left + right`` keys, taken as overlapping
windows (``unfold``) of one zero-padded copy of the keys. Within that slice the band is the same for every chunk
(row ``r`` sees slice columns ``r .. r + left + right``), so one dense 4-D call over (batch x chunk, head) with a
``(chunks, C, C + left + right)`` mask (the band, and the slice's columns that fall outside the keys) computes every
chunk at once.
"""

from __future__ import annotations

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
    chunk = min(CHUNK, max(16, L))
    span = chunk + width - 1  # keys one chunk sees
    if 2 * span > S:
        return None
    batch_shape = query.shape[:-3] if query.dim() >= 3 else ()
    q, k, v = (t.reshape(-1, *t.shape[-3:]) if t.dim() >= 3 else t[None, None] for t in (query, key, value))
    if enable_gqa and k.size(1) != q.size(1):  # heads move off dim -3 below: repeat them first
        k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))
    chunks = -(-L // chunk)
    q = torch.nn.functional.pad(q, (0, 0, 0, chunks * chunk - L))  # (B, H, chunks * C, E)
    first = band.shift(L, S) - band.left  # key index of chunk 0's first slice column
    cols = first + torch.arange(chunks, device=q.device)[:, None] * chunk + torch.arange(span, device=q.device)
    inside = (cols >= 0) & (cols < S)  # (chunks, span): slice columns that are keys
    # batch and chunks as one batch dim: torch's SDPA takes its fused CPU kernel for 4-D inputs only (5-D ones go
    # to the math path, measured 2-3x slower here)
    n = q.size(0)
    q = q.unflatten(2, (chunks, chunk)).transpose(1, 2).flatten(0, 1)  # (B * chunks, H, C, E)
    # the keys' slices as overlapping windows of one zero-padded copy (a view where B = 1: no gather)
    pad_left, pad_right = max(0, -first), max(0, first + (chunks - 1) * chunk + span - S)
    k, v = (
        torch.nn.functional.pad(t, (0, 0, pad_left, pad_right))[:, :, first + pad_left :]
        .unfold(2, span, chunk)[:, :, :chunks]
        .transpose(-1, -2)
        .transpose(1, 2)
        .flatten(0, 1)
        for t in (k, v)
    )  # (B * chunks, H, span, *)
    rel = torch.arange(span, device=q.device)[None, :] - torch.arange(chunk, device=q.device)[:, None]
    mask = ((rel >= 0) & (rel < width))[None] & inside[:, None, :]  # (chunks, C, span)
    mask = mask[:, None].repeat(n, 1, 1, 1)  # (B * chunks, 1, C, span)
    out = attend(q, k, v, mask, dropout_p, False, scale, False)  # (B * chunks, H, C, Ev)
    out = out.unflatten(0, (n, chunks)).transpose(1, 2).flatten(2, 3)[:, :, :L]  # (B, H, L, Ev)
    return out.reshape(*batch_shape, *out.shape[-3:]) if query.dim() >= 3 else out[0, 0]


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
