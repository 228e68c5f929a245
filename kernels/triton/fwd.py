r"""Fused attention forward (FlashAttention-2, Dao 2023): one program per (query block, batch x head).

For a query row q and key blocks K_j, with c = scale * log2(e) folded into one multiply-add per score:

    x_j   = q K_j^T                                  (float32 accumulate)
    m_j   = max(m_{j-1}, c * max(x_j))               running maximum, log2 units
    p_j   = 2^(c * x_j - m_j)                        (0 where masked: band, bool mask; + log2(e) * bias)
    l_j   = l_{j-1} 2^(m_{j-1} - m_j) + sum p_j
    acc_j = acc_{j-1} 2^(m_{j-1} - m_j) + (p_j * keep_j / (1 - p)) V_j
    out   = acc / l,     lse = m + log2(l)   (kept for the backward pass)

A row with nothing to attend to keeps m = -inf: where a block can hide a whole row (the band's edge blocks, a
mask tile) the maximum is guarded (0 instead of -inf, so no inf - inf); l stays 0 and the row returns 0 with
lse = +inf, so the backward pass recomputes probabilities 2^(s - lse) = 0.

The key blocks a query block visits come from the band (`common._col_bounds`): whole blocks every row sees run
without any mask, the edge blocks with it. Loads go through tensor descriptors (``USE_TMA``: the copy engine,
zero-filled outside the sequence) or plain pointers; the last dimension is contiguous (the launcher ensures
it), every other dimension is read through its stride, so transposed inputs need no copy. Dropout keeps an
element with probability 1 - p from Philox (`common._dropout_keep`: one call for four neighbouring keys, counter
(batch x head) * 2^32 + row * cdiv(S, 4) + column // 4): the backward pass regenerates the same mask. Causal blocks
run longest first.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    LOG2E,
    _band,
    _col_bounds,
    _descriptor,
    _dropout_keep,
    _find_sequence,
    _load_rows,
    _mask_tile,
    _store_rows,
)  # fmt: skip


@triton.jit
def _fwd_block(
    acc, l_i, m_i, q, K, V, k_desc, v_desc, mask_rows, seed, start_n, rows, drop_base, L, S, D, DV, qk_scale,
    stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
    MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, USE_TMA: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """One key block of the online softmax; ``MASKED`` blocks apply the band (the others are whole)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, k_desc, start_n, stride_kn, S, D, BLOCK_N, BLOCK_D, USE_TMA, MASKED, EVEN_D)
    x = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    if MASKED:
        x = tl.where(_band(rows, cols, L, S, shift, left, right, HAS_LEFT, HAS_RIGHT), x, float("-inf"))
    if MASK_KIND != 0:  # columns clamped: those past S are masked by the band anyway
        tile = tl.load(mask_rows + (tl.minimum(cols, S - 1) if MASKED else cols)[None, :] * stride_mn)
        x = _mask_tile(x, tile, qk_scale, MASK_KIND)
    m_new = tl.maximum(m_i, tl.max(x, 1) * qk_scale)
    if MASKED or MASK_KIND != 0:  # a row may have seen nothing yet: no inf - inf
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(x * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed, drop_base, rows, start_n // 4 + tl.arange(0, BLOCK_N // 4), S, dropout_p,
                             rows.shape[0], BLOCK_N)  # fmt: skip
        p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
    v = _load_rows(V, v_desc, start_n, stride_vn, S, DV, BLOCK_N, BLOCK_DV, USE_TMA, MASKED, EVEN_D)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def attn_fwd(
    Q, K, V, Mask, Out, Lse, Seed, CuQ, CuK,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_mm, stride_mn, stride_ob, stride_oh, stride_om,
    B, H, GROUP, L, S, D, DV, TQ, L_KEY, S_KEY, sm_scale, dropout_p, left, right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, LOWER_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr, USE_TMA: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Shapes: dense ``Q (B, H, L, D)``, ``K (B, Hk, S, D)``, ``V (B, Hk, S, DV)``, ``Out (B, H, L, DV)``,
    ``Lse (B * H, L)``; packed (``VARLEN``) ``Q (TQ, H, D)``, ``K``/``V (TK, Hk, *)``, ``Lse (H, TQ)`` with
    offsets ``CuQ``/``CuK (B + 1,)``. ``L_KEY``/``S_KEY`` only key the autotuner (bucketed lengths)."""
    h = tl.program_id(1)
    if VARLEN:
        b, q_start, L, start_m = _find_sequence(CuQ, B, tl.program_id(0), BLOCK_M)
        k_start = tl.load(CuK + b)
        S = tl.load(CuK + b + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
        lse_row = h * TQ + q_start
    else:
        b = h // H
        h = h % H
        q_start = 0
        k_start = 0
        start_m = tl.program_id(0)
        if HAS_RIGHT:  # the longest query blocks first: the short ones fill the last wave
            start_m = tl.num_programs(0) - 1 - start_m
        lse_row = (b * H + h).to(tl.int64) * L
    m0 = start_m * BLOCK_M
    if m0 >= L:  # variable length: an idle program of the grid
        return
    h_kv = h // GROUP
    b64 = b.to(tl.int64)
    Q += b64 * stride_qb + h * stride_qh + q_start * stride_qm
    K += b64 * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V += b64 * stride_vb + h_kv * stride_vh + k_start * stride_vn
    Out += b64 * stride_ob + h * stride_oh + q_start * stride_om
    rows = m0 + tl.arange(0, BLOCK_M)
    q_desc = _descriptor(Q, L, D, stride_qm, BLOCK_M, BLOCK_D, USE_TMA)
    k_desc = _descriptor(K, S, D, stride_kn, BLOCK_N, BLOCK_D, USE_TMA)
    v_desc = _descriptor(V, S, DV, stride_vn, BLOCK_N, BLOCK_DV, USE_TMA)
    q = _load_rows(Q, q_desc, m0, stride_qm, L, D, BLOCK_M, BLOCK_D, USE_TMA, True, EVEN_D)
    mask_rows = Q  # unused without a mask
    if MASK_KIND != 0:  # rows clamped: the junk rows of the last block read in bounds
        mask_rows = Mask + b64 * stride_mb + h * stride_mh + tl.minimum(rows, L - 1)[:, None] * stride_mm
    seed = tl.load(Seed) if HAS_DROPOUT else 0
    drop_base = (b * H + h).to(tl.int64) << 32  # this (batch, head)'s own Philox stream

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    qk_scale = sm_scale * LOG2E
    shift = S - L if LOWER_RIGHT else 0
    lo, mid_lo, mid_hi, hi = _col_bounds(m0, L, S, shift, left, right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    if HAS_LEFT:  # the window's left edge
        for start_n in range(lo, mid_lo, BLOCK_N):
            acc, l_i, m_i = _fwd_block(
                acc, l_i, m_i, q, K, V, k_desc, v_desc, mask_rows, seed, start_n, rows, drop_base, L, S, D, DV,
                qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
                True, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION,
                BLOCK_N, BLOCK_D, BLOCK_DV,
            )  # fmt: skip
    for start_n in range(mid_lo, mid_hi, BLOCK_N):  # whole blocks: no mask
        acc, l_i, m_i = _fwd_block(
            acc, l_i, m_i, q, K, V, k_desc, v_desc, mask_rows, seed, start_n, rows, drop_base, L, S, D, DV,
            qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
            False, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION,
            BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for start_n in range(mid_hi, hi, BLOCK_N):  # the diagonal, the right edge, the last partial block
        acc, l_i, m_i = _fwd_block(
            acc, l_i, m_i, q, K, V, k_desc, v_desc, mask_rows, seed, start_n, rows, drop_base, L, S, D, DV,
            qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
            True, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION,
            BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    o_desc = _descriptor(Out, L, DV, stride_om, BLOCK_M, BLOCK_DV, USE_TMA)
    _store_rows(Out, o_desc, m0, stride_om, L, DV, out.to(Out.dtype.element_ty), BLOCK_M, BLOCK_DV, USE_TMA)
    tl.store(Lse + lse_row + rows, lse, mask=rows < L)
