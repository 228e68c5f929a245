"""Band masks on the ``TORCH`` and ``MATH`` backends: torch's own causal flag where it is one, a chunked computation
for sliding windows (so a window costs ``L x window``, not ``L x S``), the materialised mask otherwise.

Chunks: the queries are cut into chunks of ``C`` rows (``C`` about half the window); the rows of a chunk starting at
``c0`` can only see the keys ``[c0 + shift - left, c0 + C - 1 + shift + right]``, a slice of ``C + left + right``
keys, taken as overlapping windows (``unfold``) of the keys themselves. Within that slice the band is the same for
every chunk (row ``r`` sees slice columns ``r .. r + left + right``), so one dense 4-D call over (chunk, batch x
head) with one ``(C, C + left + right)`` mask, broadcast over the chunks, computes every chunk whose slice lies
inside the keys. The rows before and after those chunks (a causal window's first chunks, whose slices would start
before key 0, and a last partial chunk) run as one or two small calls over the keys they see.
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
    unbounded, a window about as wide as the keys, or no chunk whose slice lies inside the keys)."""
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
    first = band.shift(L, S) - band.left  # key index of chunk 0's first slice column (chunk c's: first + c * C)
    lo = max(0, -(first // chunk))  # the first chunk whose slice starts inside the keys
    hi = min(L // chunk, (S - span - first) // chunk + 1)  # past the last whole chunk whose slice ends inside them
    if 2 * span > S or hi <= lo:
        return None
    batch_shape = query.shape[:-3] if query.dim() >= 3 else ()
    q, k, v = (t.reshape(-1, *t.shape[-3:]) if t.dim() >= 3 else t[None, None] for t in (query, key, value))
    if enable_gqa and k.size(1) != q.size(1):  # heads move off dim -3 below: repeat them first
        k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))
    chunks, start = hi - lo, first + lo * chunk
    rel = torch.arange(span, device=q.device)[None, :] - torch.arange(chunk, device=q.device)[:, None]
    mask = (rel >= 0) & (rel < width)  # (C, span): the same band in every chunk, broadcast over them

    # batch and heads not one strided dim (heads interleaved in the tokens, as a layer's projections leave them):
    # one copy in (N, H, S, E) order, where batch x chunk as the batch dim copied every key slice (C + window - 1
    # keys per C queries). Interleaved A/B, L = 4096, window 128, forward + backward: batch 4 and 8 contiguous
    # 1.17x and 1.22x less time (no copy at all now), interleaved 1.04x-1.08x; batch 1 unchanged (never copied)
    q, k, v = (t if _one_batch_dim(t) else t.contiguous() for t in (q, k, v))
    n, h = q.shape[:2]
    # chunks as the batch dim, (batch, head) as the heads: torch's SDPA takes its fused CPU kernel for 4-D inputs
    # only (5-D ones go to the math path, measured 2-3x slower here)
    q_in = q[:, :, lo * chunk : hi * chunk].unflatten(2, (chunks, chunk)).permute(2, 0, 1, 3, 4).flatten(1, 2)
    # the keys' slices as overlapping windows of the keys themselves (views: nothing copied)
    k_in, v_in = (
        t[:, :, start : start + (chunks - 1) * chunk + span].unfold(2, span, chunk).permute(2, 0, 1, 4, 3)
        .flatten(1, 2)
        for t in (k, v)
    )  # fmt: skip  # (chunks, N * H, span, *)
    out = attend(q_in, k_in, v_in, mask, dropout_p, False, scale, False)  # (chunks, N * H, C, Ev)
    pieces = [out.unflatten(1, (n, h)).permute(1, 2, 0, 3, 4).flatten(2, 3)]  # (N, H, chunks * C, Ev)
    # the rows before and after those chunks (their slices would reach outside the keys), over the keys they see
    if lo:
        pieces.insert(0, _rows(attend, q, k, v, band, 0, lo * chunk, L, S, dropout_p, scale))
    if hi * chunk < L:
        pieces.append(_rows(attend, q, k, v, band, hi * chunk, L, L, S, dropout_p, scale))
    out = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]  # (B, H, L, Ev)
    return out.reshape(*batch_shape, *out.shape[-3:]) if query.dim() >= 3 else out[0, 0]


def _one_batch_dim(t: torch.Tensor) -> bool:
    """Whether ``t (N, H, ...)``'s batch and head dims flatten into one without a copy."""
    return t.size(0) == 1 or t.size(1) == 1 or t.stride(0) == t.size(1) * t.stride(1)


def _rows(attend, q, k, v, band: Band, r0: int, r1: int, L: int, S: int, dropout_p: float, scale) -> torch.Tensor:
    """Rows ``[r0, r1)`` of the band's attention, over the keys those rows can see, with the band as a mask."""
    shift = band.shift(L, S)
    k0, k1 = max(0, r0 + shift - band.left), min(S, r1 + shift + band.right)
    if k1 <= k0:  # nothing to see: one key, masked (the rows give zeros)
        k0, k1 = 0, 1
    rel = torch.arange(k0, k1, device=q.device)[None, :] - torch.arange(r0, r1, device=q.device)[:, None] - shift
    mask = (rel >= -band.left) & (rel <= band.right)  # (r1 - r0, k1 - k0)
    return attend(q[:, :, r0:r1], k[:, :, k0:k1], v[:, :, k0:k1], mask, dropout_p, False, scale, False)


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
