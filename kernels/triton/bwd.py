r"""Fused attention backward (FlashAttention-2): a preprocess, a dK/dV pass and a dQ pass. No atomics.

With P = softmax(S), dropout keep mask Z (scaled by 1 / (1 - p)), O = (P * Z) V and upstream dO:

    dV = (P * Z)^T dO
    dP = (dO V^T) * Z
    dS = P * (dP - delta),   delta_i = sum_d dO_id O_id     (the preprocess: rowsum(dO * O))
    dQ = scale * dS K,       dK = scale * dS^T Q

P is recomputed from the saved log-sum-exp: P = 2^(c x - lse) (c = scale * log2(e), folded into one multiply-add),
which is 0 where masked and for rows with nothing to attend to (lse = +inf), so those rows pass zero gradients.
Z is regenerated from the same Philox seed and offsets as the forward pass. The dK/dV pass owns a key block and
loops over query blocks (and, for grouped-query attention, over the query heads sharing its key/value head),
computing the transposed tiles ``(BLOCK_N, BLOCK_M)`` so that no operand is transposed in registers; each dK/dV
element is written by exactly one program: deterministic. The dQ pass owns a query block and loops over key
blocks. Both visit only the blocks inside the band (`common`), and run whole blocks without any mask.
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
    _dropout_keep_t,
    _find_sequence,
    _half_descriptor,
    _load_half,
    _load_rows,
    _mask_tile,
    _row_bounds,
    _store_rows,
)


@triton.jit
def attn_bwd_preprocess(
    Out, DO, Delta, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom,
    H, L, DV, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O) in float32, one (BLOCK_M,) slice per program; laid out like the log-sum-exp."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = (rows[:, None] < L) & (offs_dv[None, :] < DV)
    o = tl.load(Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_dv[None, :],
                mask=inside, other=0.0).to(tl.float32)  # fmt: skip
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom + offs_dv[None, :],
                 mask=inside, other=0.0).to(tl.float32)  # fmt: skip
    tl.store(Delta + bh.to(tl.int64) * L + rows, tl.sum(o * do, 1), mask=rows < L)


@triton.jit
def _dkdv_block(
    dk, dv, k, v, Q, DO, q_desc, do_desc, qh_desc, mask_cols, Lse, Delta, seed, start_m, cols, quads, drop_base, L, S,
    D, DV, qk_scale, stride_qm, stride_dom, stride_mm, shift, left, right, dropout_p,
    MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, USE_TMA: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
    PART: tl.constexpr, HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """One query block's contribution to this key block's dK and dV (``PART`` 0), dV only (1) or dK only (2), in
    transposed tiles (keys x queries); with ``HALF`` 1 or 2, to one half of the columns of that one (``do_desc``:
    then over dO's half for dV; ``qh_desc``: over Q's half for dK)."""
    rows = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q, q_desc, start_m, stride_qm, L, D, BLOCK_M, BLOCK_D, USE_TMA, MASKED, EVEN_D)
    x = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
    if MASKED:
        x = tl.where(tl.trans(_band(rows, cols, L, S, shift, left, right, HAS_LEFT, HAS_RIGHT)), x, float("-inf"))
        lse = tl.load(Lse + rows, mask=rows < L, other=float("inf"))
        if PART != 1:
            delta = tl.load(Delta + rows, mask=rows < L, other=0.0)
    else:
        lse = tl.load(Lse + rows)
        if PART != 1:
            delta = tl.load(Delta + rows)
    if MASK_KIND != 0:  # rows clamped: those past L are masked by the band anyway
        tile = tl.load(mask_cols + (tl.minimum(rows, L - 1) if MASKED else rows)[None, :] * stride_mm)
        x = _mask_tile(x, tile, qk_scale, MASK_KIND)
    p = tl.math.exp2(x * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M); 0 where masked
    if PART == 1 and HALF != 0:  # dV's half only needs dO's half
        do = _load_half(DO, do_desc, start_m, stride_dom, L, DV, BLOCK_M, BLOCK_DV, HALF, USE_TMA, MASKED, EVEN_D)
    else:
        do = _load_rows(DO, do_desc, start_m, stride_dom, L, DV, BLOCK_M, BLOCK_DV, USE_TMA, MASKED, EVEN_D)
    if PART != 1:
        dp = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
    if HAS_DROPOUT:  # the forward's (BLOCK_M, BLOCK_N) mask, transposed to these tiles
        keep = _dropout_keep_t(seed, drop_base, rows, quads, S, dropout_p, BLOCK_M, quads.shape[0] * 4)
    if PART != 2:
        if HAS_DROPOUT:
            pz = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
            dv = tl.dot(pz.to(do.dtype), do, dv, input_precision=PRECISION)
        else:
            dv = tl.dot(p.to(do.dtype), do, dv, input_precision=PRECISION)
    if PART != 1:
        if HAS_DROPOUT:
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[None, :])
        if HALF != 0:  # dK[:, half] = dS^T Q[:, half]: this query block's columns of the half
            qh = _load_half(Q, qh_desc, start_m, stride_qm, L, D, BLOCK_M, BLOCK_D, HALF, USE_TMA, MASKED, EVEN_D)
            dk = tl.dot(ds.to(q.dtype), qh, dk, input_precision=PRECISION)
        else:
            dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, Mask, DO, Lse, Delta, DK, DVout, Seed, CuQ, CuK,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_mm, stride_mn, stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    B, H, GROUP, L, S, D, DV, TQ, L_KEY, S_KEY, sm_scale, dropout_p, left, right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, LOWER_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr, USE_TMA: tl.constexpr,
    EVEN_D: tl.constexpr, PART: tl.constexpr, HALF: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key block ``[n0, n0 + BLOCK_N)`` of one (batch, key/value head); layouts as `attn_fwd`.

    ``PART`` 0 computes both; above head dim 128 the launcher runs the kernel twice, ``PART`` 1 for dV and 2 for
    dK: two (BLOCK_N, 256) float32 accumulators leave no registers for the 64-row tiles ``wgmma`` needs, one does.
    The price is Q K^T computed in both launches (5 products per block pair instead of 4). Where even one
    accumulator leaves too few (several features live: `ops.dkdv_parts`), each part runs once per half of its
    columns (``HALF`` 1 and 2), as dQ's halves do: 8 products per block pair instead of 4, all of them ``wgmma``."""
    h_kv = tl.program_id(1)
    if VARLEN:
        b, k_start, S, start_n = _find_sequence(CuK, B, tl.program_id(0), BLOCK_N)
        q_start = tl.load(CuQ + b)
        L = tl.load(CuQ + b + 1) - q_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
    else:
        b = h_kv // (H // GROUP)
        h_kv = h_kv % (H // GROUP)
        q_start = 0
        k_start = 0
        start_n = tl.program_id(0)
    n0 = start_n * BLOCK_N
    if n0 >= S:  # variable length: an idle program of the grid
        return
    b64 = b.to(tl.int64)
    K += b64 * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V += b64 * stride_vb + h_kv * stride_vh + k_start * stride_vn
    DK += b64 * stride_dkb + h_kv * stride_dkh + k_start * stride_dkn
    DVout += b64 * stride_dvb + h_kv * stride_dvh + k_start * stride_dvn
    cols = n0 + tl.arange(0, BLOCK_N)
    quads = n0 // 4 + tl.arange(0, BLOCK_N // 4)  # dropout: one Philox call per four keys (`_dropout_keep`)
    k_desc = _descriptor(K, S, D, stride_kn, BLOCK_N, BLOCK_D, USE_TMA)
    k = _load_rows(K, k_desc, n0, stride_kn, S, D, BLOCK_N, BLOCK_D, USE_TMA, True, EVEN_D)
    if PART != 1:
        v_desc = _descriptor(V, S, DV, stride_vn, BLOCK_N, BLOCK_DV, USE_TMA)
        v = _load_rows(V, v_desc, n0, stride_vn, S, DV, BLOCK_N, BLOCK_DV, USE_TMA, True, EVEN_D)
    else:
        v = k  # not read: dV needs P and dO only
    seed = tl.load(Seed) if HAS_DROPOUT else 0
    if HALF != 0 and PART == 2:
        dk = tl.zeros([BLOCK_N, BLOCK_D // 2], tl.float32)
    else:
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if HALF != 0 and PART == 1:
        dv = tl.zeros([BLOCK_N, BLOCK_DV // 2], tl.float32)
    else:
        dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    qk_scale = sm_scale * LOG2E
    shift = S - L if LOWER_RIGHT else 0
    lo, mid_lo, mid_hi, hi = _row_bounds(n0, L, S, shift, left, right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for g in range(0, GROUP):  # the query heads that share this key/value head
        h = h_kv * GROUP + g
        Qh = Q + b64 * stride_qb + h * stride_qh + q_start * stride_qm
        DOh = DO + b64 * stride_dob + h * stride_doh + q_start * stride_dom
        row = h * TQ + q_start if VARLEN else (b * H + h).to(tl.int64) * L  # log-sum-exp, delta: (H, TQ) or (B*H, L)
        lse_h = Lse + row
        delta_h = Delta + row
        q_desc = _descriptor(Qh, L, D, stride_qm, BLOCK_M, BLOCK_D, USE_TMA)
        qh_desc = q_desc  # unused without halves
        if PART == 1 and HALF != 0:  # dV's half reads dO's half
            do_desc = _half_descriptor(DOh, L, DV, stride_dom, BLOCK_M, BLOCK_DV, HALF, USE_TMA)
        else:
            do_desc = _descriptor(DOh, L, DV, stride_dom, BLOCK_M, BLOCK_DV, USE_TMA)
            if HALF != 0:  # dK's half reads Q's half too
                qh_desc = _half_descriptor(Qh, L, D, stride_qm, BLOCK_M, BLOCK_D, HALF, USE_TMA)
        mask_cols = Qh  # unused without a mask
        if MASK_KIND != 0:  # columns clamped: the junk columns of the last key block read in bounds
            mask_cols = Mask + b64 * stride_mb + h * stride_mh + tl.minimum(cols, S - 1)[:, None] * stride_mn
        drop_base = (b * H + h).to(tl.int64) << 32
        if HAS_RIGHT:  # the diagonal (causal) or the window's right edge
            for start_m in range(lo, mid_lo, BLOCK_M):
                dk, dv = _dkdv_block(
                    dk, dv, k, v, Qh, DOh, q_desc, do_desc, qh_desc, mask_cols, lse_h, delta_h, seed, start_m, cols,
                    quads, drop_base, L, S, D, DV, qk_scale, stride_qm, stride_dom, stride_mm, shift, left, right,
                    dropout_p, True, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION, PART,
                    HALF, BLOCK_M, BLOCK_D, BLOCK_DV,
                )  # fmt: skip
        for start_m in range(mid_lo, mid_hi, BLOCK_M):  # whole blocks: no mask
            dk, dv = _dkdv_block(
                dk, dv, k, v, Qh, DOh, q_desc, do_desc, qh_desc, mask_cols, lse_h, delta_h, seed, start_m, cols,
                quads, drop_base, L, S, D, DV, qk_scale, stride_qm, stride_dom, stride_mm, shift, left, right,
                dropout_p, False, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION, PART, HALF,
                BLOCK_M, BLOCK_D, BLOCK_DV,
            )  # fmt: skip
        for start_m in range(mid_hi, hi, BLOCK_M):  # the window's left edge, the last partial block
            dk, dv = _dkdv_block(
                dk, dv, k, v, Qh, DOh, q_desc, do_desc, qh_desc, mask_cols, lse_h, delta_h, seed, start_m, cols,
                quads, drop_base, L, S, D, DV, qk_scale, stride_qm, stride_dom, stride_mm, shift, left, right,
                dropout_p, True, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION, PART, HALF,
                BLOCK_M, BLOCK_D, BLOCK_DV,
            )  # fmt: skip

    if PART != 1:
        dk = (dk * sm_scale).to(DK.dtype.element_ty)
        _store_columns(DK, n0, stride_dkn, S, D, dk, BLOCK_N, BLOCK_D, HALF, USE_TMA)
    if PART != 2:
        dv = dv.to(DVout.dtype.element_ty)
        _store_columns(DVout, n0, stride_dvn, S, DV, dv, BLOCK_N, BLOCK_DV, HALF, USE_TMA)


@triton.jit
def _store_columns(Base, r0, stride, n_rows, D, value, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                   HALF: tl.constexpr, USE_TMA: tl.constexpr):  # fmt: skip
    """Store ``value`` to rows ``[r0, r0 + BLOCK_R)`` of a ``(n_rows, D)`` matrix: all ``BLOCK_D`` columns
    (``HALF`` 0), or half 1 or 2 of them (``value`` then holds ``BLOCK_D // 2`` columns)."""
    if HALF != 0:
        c0 = (HALF - 1) * (BLOCK_D // 2)
        desc = _half_descriptor(Base, n_rows, D, stride, BLOCK_R, BLOCK_D, HALF, USE_TMA)
        _store_rows(Base + c0, desc, r0, stride, n_rows, D - c0, value, BLOCK_R, BLOCK_D // 2, USE_TMA)
    else:
        desc = _descriptor(Base, n_rows, D, stride, BLOCK_R, BLOCK_D, USE_TMA)
        _store_rows(Base, desc, r0, stride, n_rows, D, value, BLOCK_R, BLOCK_D, USE_TMA)


@triton.jit
def _dq_block(
    dq, q, do, lse, delta, K, V, k_desc, kh_desc, v_desc, mask_rows, seed, start_n, rows, drop_base, L, S, D, DV,
    qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
    MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, USE_TMA: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
    HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """One key block's contribution to this query block's dQ (``HALF`` 1 or 2: to one half of its columns)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, k_desc, start_n, stride_kn, S, D, BLOCK_N, BLOCK_D, USE_TMA, MASKED, EVEN_D)
    x = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    if MASKED:
        x = tl.where(_band(rows, cols, L, S, shift, left, right, HAS_LEFT, HAS_RIGHT), x, float("-inf"))
    if MASK_KIND != 0:
        tile = tl.load(mask_rows + (tl.minimum(cols, S - 1) if MASKED else cols)[None, :] * stride_mn)
        x = _mask_tile(x, tile, qk_scale, MASK_KIND)
    p = tl.math.exp2(x * qk_scale - lse[:, None])
    v = _load_rows(V, v_desc, start_n, stride_vn, S, DV, BLOCK_N, BLOCK_DV, USE_TMA, MASKED, EVEN_D)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed, drop_base, rows, start_n // 4 + tl.arange(0, BLOCK_N // 4), S, dropout_p,
                             rows.shape[0], BLOCK_N)  # fmt: skip
        dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
    ds = p * (dp - delta[:, None])
    if HALF != 0:  # dQ[:, half] = dS K[:, half]: the key block's columns of this half
        kh = _load_half(K, kh_desc, start_n, stride_kn, S, D, BLOCK_N, BLOCK_D, HALF, USE_TMA, MASKED, EVEN_D)
        dq = tl.dot(ds.to(k.dtype), kh, dq, input_precision=PRECISION)
    else:
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def attn_bwd_dq(
    Q, K, V, Mask, DO, Lse, Delta, DQ, Seed, CuQ, CuK,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_mm, stride_mn, stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    B, H, GROUP, L, S, D, DV, TQ, L_KEY, S_KEY, sm_scale, dropout_p, left, right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, LOWER_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr, USE_TMA: tl.constexpr,
    EVEN_D: tl.constexpr, HALF: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """dQ of one query block of one (batch, head); layouts as `attn_fwd`.

    ``HALF`` 0 computes all of dQ's columns. Where the installed Triton keeps no spill-free ``wgmma`` tile for the
    variant (`tiles.dq_halves`: head dim 256 with more state live, under triton 3.6), the launcher runs the kernel
    twice, ``HALF`` 1 and 2, each accumulating one half of the columns: half the accumulator, at the price of S and
    dP computed in both launches (5 products per block pair instead of 3)."""
    h = tl.program_id(1)
    if VARLEN:
        b, q_start, L, start_m = _find_sequence(CuQ, B, tl.program_id(0), BLOCK_M)
        k_start = tl.load(CuK + b)
        S = tl.load(CuK + b + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
        row = h * TQ + q_start
    else:
        b = h // H
        h = h % H
        q_start = 0
        k_start = 0
        start_m = tl.program_id(0)
        if HAS_RIGHT:  # the longest query blocks first
            start_m = tl.num_programs(0) - 1 - start_m
        row = (b * H + h).to(tl.int64) * L
    m0 = start_m * BLOCK_M
    if m0 >= L:
        return
    h_kv = h // GROUP
    b64 = b.to(tl.int64)
    Q += b64 * stride_qb + h * stride_qh + q_start * stride_qm
    DO += b64 * stride_dob + h * stride_doh + q_start * stride_dom
    DQ += b64 * stride_dqb + h * stride_dqh + q_start * stride_dqm
    K += b64 * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V += b64 * stride_vb + h_kv * stride_vh + k_start * stride_vn
    rows = m0 + tl.arange(0, BLOCK_M)
    q_desc = _descriptor(Q, L, D, stride_qm, BLOCK_M, BLOCK_D, USE_TMA)
    do_desc = _descriptor(DO, L, DV, stride_dom, BLOCK_M, BLOCK_DV, USE_TMA)
    k_desc = _descriptor(K, S, D, stride_kn, BLOCK_N, BLOCK_D, USE_TMA)
    v_desc = _descriptor(V, S, DV, stride_vn, BLOCK_N, BLOCK_DV, USE_TMA)
    q = _load_rows(Q, q_desc, m0, stride_qm, L, D, BLOCK_M, BLOCK_D, USE_TMA, True, EVEN_D)
    do = _load_rows(DO, do_desc, m0, stride_dom, L, DV, BLOCK_M, BLOCK_DV, USE_TMA, True, EVEN_D)
    lse = tl.load(Lse + row + rows, mask=rows < L, other=float("inf"))
    delta = tl.load(Delta + row + rows, mask=rows < L, other=0.0)
    mask_rows = Q  # unused without a mask
    if MASK_KIND != 0:
        mask_rows = Mask + b64 * stride_mb + h * stride_mh + tl.minimum(rows, L - 1)[:, None] * stride_mm
    seed = tl.load(Seed) if HAS_DROPOUT else 0
    drop_base = (b * H + h).to(tl.int64) << 32
    if HALF != 0:
        kh_desc = _half_descriptor(K, S, D, stride_kn, BLOCK_N, BLOCK_D, HALF, USE_TMA)
        dq = tl.zeros([BLOCK_M, BLOCK_D // 2], tl.float32)
    else:
        kh_desc = k_desc
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = sm_scale * LOG2E
    shift = S - L if LOWER_RIGHT else 0
    lo, mid_lo, mid_hi, hi = _col_bounds(m0, L, S, shift, left, right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    if HAS_LEFT:
        for start_n in range(lo, mid_lo, BLOCK_N):
            dq = _dq_block(
                dq, q, do, lse, delta, K, V, k_desc, kh_desc, v_desc, mask_rows, seed, start_n, rows, drop_base,
                L, S, D, DV, qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
                True, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION, HALF,
                BLOCK_N, BLOCK_D, BLOCK_DV,
            )  # fmt: skip
    for start_n in range(mid_lo, mid_hi, BLOCK_N):
        dq = _dq_block(
            dq, q, do, lse, delta, K, V, k_desc, kh_desc, v_desc, mask_rows, seed, start_n, rows, drop_base,
            L, S, D, DV, qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
            False, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION, HALF,
            BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for start_n in range(mid_hi, hi, BLOCK_N):
        dq = _dq_block(
            dq, q, do, lse, delta, K, V, k_desc, kh_desc, v_desc, mask_rows, seed, start_n, rows, drop_base,
            L, S, D, DV, qk_scale, stride_kn, stride_vn, stride_mn, shift, left, right, dropout_p,
            True, HAS_LEFT, HAS_RIGHT, MASK_KIND, HAS_DROPOUT, USE_TMA, EVEN_D, PRECISION, HALF,
            BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    dq = (dq * sm_scale).to(DQ.dtype.element_ty)
    _store_columns(DQ, m0, stride_dqm, L, D, dq, BLOCK_M, BLOCK_D, HALF, USE_TMA)
