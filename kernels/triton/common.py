r"""Pieces the forward and backward kernels share: where a program's sequence lives, which key (or query) blocks
a block of rows must visit and which of those need no mask, the band mask itself, and dropout.

**The band.** Query row ``i`` may attend to key column ``j`` when ``j < S`` and

    -left <= j - i - shift <= right,      shift = S - L (bottom-right aligned) or 0 (top-left aligned)

with either bound absent (``HAS_LEFT`` / ``HAS_RIGHT``). Top-left causal is ``right = 0`` with no left bound,
bottom-right causal the same with ``shift = S - L``, a sliding window of ``w`` keys ``left = w - 1``.

**Three loops.** For a block of rows ``[m0, m_end)`` the visible columns are ``[lo, hi)``; the columns that every
row of the block sees lie in ``[full_lo, full_hi)`` (rounded inwards to whole key blocks, and below the last
partial block). The kernels run the blocks of ``[lo, mid_lo)`` and ``[mid_hi, hi)`` with the band mask and the
blocks between without any mask: no bounds on loads, no compare, no guard against all-masked rows. A block of
key columns in the backward dK/dV pass uses the same bounds with rows and columns swapped (`_row_bounds`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import cdiv

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr global: the compiler reads nothing else


@triton.jit
def _find_sequence(Cu, B, pid, BLOCK: tl.constexpr):
    """Variable length: the sequence ``b`` and block index of program ``pid`` along a packed axis.

    Sequence ``b`` owns the program ids ``[Cu[b] // BLOCK + b, Cu[b + 1] // BLOCK + b + 1)``: disjoint, rising
    with ``b``, and at least ``cdiv(len_b, BLOCK)`` of them, so a grid of ``cdiv(T, BLOCK) + B`` programs covers
    every block with at most one idle program per sequence, and no table has to be built on the host (no
    synchronisation). A binary search over the offsets finds ``b`` (``log2(B)`` scalar loads).
    """
    lo = 0
    hi = B
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tl.load(Cu + mid) // BLOCK + mid <= pid:
            lo = mid
        else:
            hi = mid
    start = tl.load(Cu + lo)
    length = tl.load(Cu + lo + 1) - start
    return lo, start, length, pid - (start // BLOCK + lo)


@triton.jit
def _col_bounds(
    m0, L, S, shift, left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    """Key-block bounds ``(lo, mid_lo, mid_hi, hi)`` for the query rows ``[m0, m0 + BLOCK_M)``: blocks in
    ``[mid_lo, mid_hi)`` need no mask, those in ``[lo, mid_lo)`` and ``[mid_hi, hi)`` the band mask."""
    m_end = tl.minimum(m0 + BLOCK_M, L)
    lo = 0
    hi = S
    full_lo = 0
    full_hi = S // BLOCK_N * BLOCK_N
    if HAS_RIGHT:
        hi = tl.maximum(0, tl.minimum(S, m_end + shift + right))
        full_hi = tl.minimum(full_hi, tl.maximum(0, m0 + shift + right + 1) // BLOCK_N * BLOCK_N)
    if HAS_LEFT:
        lo = tl.maximum(0, m0 + shift - left) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(0, m_end - 1 + shift - left) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _row_bounds(
    n0, L, S, shift, left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    """Query-block bounds ``(lo, mid_lo, mid_hi, hi)`` for the key columns ``[n0, n0 + BLOCK_N)`` (dK/dV pass):
    row ``i`` sees column ``j`` when ``-right <= i - (j - shift) <= left``, the band seen from the keys."""
    n_end = tl.minimum(n0 + BLOCK_N, S)
    lo = 0
    hi = L
    full_lo = 0
    full_hi = L // BLOCK_M * BLOCK_M
    if HAS_LEFT:
        hi = tl.maximum(0, tl.minimum(L, n_end - shift + left))
        full_hi = tl.minimum(full_hi, tl.maximum(0, n0 - shift + left + 1) // BLOCK_M * BLOCK_M)
    if HAS_RIGHT:
        lo = tl.maximum(0, n0 - shift - right) // BLOCK_M * BLOCK_M
        full_lo = (tl.maximum(0, n_end - 1 - shift - right) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _band(rows, cols, L, S, shift, left, right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Where row ``rows[i]`` may attend to column ``cols[j]``: inside the sequence and inside the band."""
    valid = (rows[:, None] < L) & (cols[None, :] < S)
    if HAS_RIGHT:
        valid = valid & (cols[None, :] - rows[:, None] - shift <= right)
    if HAS_LEFT:
        valid = valid & (cols[None, :] - rows[:, None] - shift >= -left)
    return valid


@triton.jit
def _mask_tile(x, tile, qk_scale, MASK_KIND: tl.constexpr):
    """A mask tile applied to scores ``x``: bool (nonzero = may attend) or additive (rescaled to the units of x)."""
    if MASK_KIND == 1:
        return tl.where(tile != 0, x, float("-inf"))
    else:
        return x + tile.to(tl.float32) * (LOG2E / qk_scale)


@triton.jit
def _load_rows(Base, desc, r0, stride, n_rows, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
               USE_TMA: tl.constexpr, BOUNDED: tl.constexpr, EVEN_D: tl.constexpr):  # fmt: skip
    """Rows ``[r0, r0 + BLOCK_R)`` of a ``(n_rows, D)`` matrix, zero outside: through its tensor descriptor
    (the copy engine zero-fills), or through pointers, bounds-checked only where ``BOUNDED`` or ``D`` is padded."""
    if USE_TMA:
        return desc.load([r0, 0])
    else:
        rows = r0 + tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = Base + rows[:, None] * stride + offs_d[None, :]
        if BOUNDED:
            return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)
        elif EVEN_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)


@triton.jit
def _store_rows(Base, desc, r0, stride, n_rows, D, value, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                USE_TMA: tl.constexpr):  # fmt: skip
    """Store ``value`` (already in the output's dtype) to rows ``[r0, r0 + BLOCK_R)`` of a ``(n_rows, D)`` matrix,
    clipped to it."""
    if USE_TMA:
        desc.store([r0, 0], value)
    else:
        rows = r0 + tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        tl.store(
            Base + rows[:, None] * stride + offs_d[None, :],
            value,
            mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D),
        )


@triton.jit
def _descriptor(Base, n_rows, D, stride, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr):
    """A 2-D tensor descriptor over ``(n_rows, D)`` with row stride ``stride`` (the pointer itself without TMA)."""
    if USE_TMA:
        return tl.make_tensor_descriptor(Base, [n_rows, D], [stride, 1], [BLOCK_R, BLOCK_D])
    else:
        return Base


@triton.jit
def _half_descriptor(Base, n_rows, D, stride, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HALF: tl.constexpr,
                     USE_TMA: tl.constexpr):  # fmt: skip
    """`_descriptor` over half ``HALF`` (1 or 2) of the ``BLOCK_D`` padded columns of a ``(n_rows, D)`` matrix."""
    c0 = (HALF - 1) * (BLOCK_D // 2)
    return _descriptor(Base + c0, n_rows, D - c0, stride, BLOCK_R, BLOCK_D // 2, USE_TMA)


@triton.jit
def _load_half(Base, desc, r0, stride, n_rows, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HALF: tl.constexpr,
               USE_TMA: tl.constexpr, BOUNDED: tl.constexpr, EVEN_D: tl.constexpr):  # fmt: skip
    """`_load_rows` of half ``HALF`` of the columns (``desc``: its `_half_descriptor`): ``(BLOCK_R, BLOCK_D // 2)``."""
    c0 = (HALF - 1) * (BLOCK_D // 2)
    return _load_rows(Base + c0, desc, r0, stride, n_rows, D - c0, BLOCK_R, BLOCK_D // 2, USE_TMA, BOUNDED, EVEN_D)


def grid_blocks(tokens: int, batch: int, block: int, varlen: bool, length: int) -> int:
    """Programs along the row axis: ``cdiv(length, block)`` dense; ``cdiv(tokens, block) + batch`` packed
    (`_find_sequence`)."""
    return cdiv(tokens, block) + batch if varlen else cdiv(length, block)


@triton.jit
def _dropout_keep(seed, drop_base, rows, quads, S, dropout_p, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Dropout's keep mask over query rows ``rows`` x the key columns of ``quads`` (``quads[j]`` covers columns
    ``4 quads[j] .. 4 quads[j] + 3``): ``(BLOCK_R, BLOCK_C)``, an element kept with probability ``1 - dropout_p``.

    One Philox call makes four 32-bit numbers, so it serves four neighbouring keys: the counter of query ``i`` and
    key ``j`` is ``drop_base + i * cdiv(S, 4) + j // 4`` and ``j % 4`` picks the number. Every kernel draws a key
    block's mask this way (dK/dV its transpose, `_dropout_keep_t`), so the backward sees the forward's mask; a
    quarter of the Philox rounds of one call per element (interleaving the four costs a register shuffle)."""
    counters = drop_base + rows[:, None] * ((S + 3) // 4) + quads[None, :]  # (BLOCK_R, BLOCK_C // 4)
    r0, r1, r2, r3 = tl.randint4x(seed, counters)
    # interleave: element 4 q + l of a row is r_l at q (join's new axis is the last: (.., q, a, b) -> r_{2a + b})
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_R, BLOCK_C))
    return tl.uint_to_uniform_float(r) >= dropout_p


@triton.jit
def _dropout_keep_t(seed, drop_base, rows, quads, S, dropout_p, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """`_dropout_keep`'s mask transposed: ``(BLOCK_C, BLOCK_R)``, keys down, queries across (dK/dV's tiles). Drawn
    in that orientation rather than through ``tl.trans``: under triton 3.9 the transpose spilled a dK/dV tile that
    this does not (packed sequences + window + dropout + grouped heads, sm_80, 16x64: 40 B)."""
    counters = drop_base + rows[None, :] * ((S + 3) // 4) + quads[:, None]  # (BLOCK_C // 4, BLOCK_R)
    r0, r1, r2, r3 = tl.randint4x(seed, counters)
    r = tl.permute(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (0, 2, 3, 1))  # (.., a, b, row): key 4 q + 2 a + b
    return tl.uint_to_uniform_float(tl.reshape(r, (BLOCK_C, BLOCK_R))) >= dropout_p
