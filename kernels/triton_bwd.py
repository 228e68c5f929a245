r"""Fused attention backward (FlashAttention-2): a preprocess, a dK/dV pass and a dQ pass. No atomics.

With P = softmax(S), dropout keep mask Z (scaled by 1 / (1 - p)), O = (P * Z) V and upstream dO:

    dV = (P * Z)^T dO
    dP = (dO V^T) * Z
    dS = P * (dP - delta),   delta_i = sum_d dO_id O_id     (the preprocess: rowsum(dO * O))
    dQ = scale * dS K,       dK = scale * dS^T Q

P is recomputed from the saved log-sum-exp: P = 2^(s - lse), which is 0 where masked and for rows with
nothing to attend to (lse = +inf), so those rows pass zero gradients. Z is regenerated from the same Philox
seed and offsets as the forward pass. The dK/dV pass owns a key block and loops over query blocks (and,
for grouped-query attention, over the query heads that share its key/value head), so each dK/dV element is
written by exactly one program: deterministic. The dQ pass owns a query block and loops over key blocks.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_fwd import LOG2E, _dropout_keep, _score_block, _sequence


@triton.jit
def attn_bwd_preprocess(
    Out, DO, Delta, stride_ob, stride_oh, stride_om, stride_od, stride_dob, stride_doh, stride_dom, stride_dod,
    H, L, DV, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O) in float32, one (BLOCK_M,) slice per program."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = (offs_m[:, None] < L) & (offs_dv[None, :] < DV)
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
                mask=inside, other=0.0).to(tl.float32)  # fmt: skip
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                 mask=inside, other=0.0).to(tl.float32)  # fmt: skip
    tl.store(Delta + bh * L + offs_m, tl.sum(o * do, 1), mask=offs_m < L)


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, Mask, DO, Lse, Delta, DK, DVout, Seed, CuQ, CuK,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, GROUP, L, S, D, DV, TQ, TK, sm_scale, dropout_p,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALLOW_TF32: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    h_kv_count = H // GROUP
    b = bhk // h_kv_count
    h_kv = bhk % h_kv_count
    q_start, L, k_start, S, _, _, _, _ = _sequence(CuQ, CuK, b, h_kv * GROUP, H, L, S, TQ, TK, VARLEN)
    if start_n >= S:  # variable length: the grid covers the longest sequence
        return
    offs_n = tl.arange(0, BLOCK_N)
    cols = start_n + offs_n
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    K += b * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V += b * stride_vb + h_kv * stride_vh + k_start * stride_vn
    DK += b * stride_dkb + h_kv * stride_dkh + k_start * stride_dkn
    DVout += b * stride_dvb + h_kv * stride_dvh + k_start * stride_dvn
    k_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v = tl.load(V + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=(cols[:, None] < S) & (offs_dv[None, :] < DV), other=0.0)  # fmt: skip
    seed = tl.load(Seed) if HAS_DROPOUT else 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    qk_scale = sm_scale * LOG2E
    lo = (start_n // BLOCK_M) * BLOCK_M if IS_CAUSAL else 0  # earlier query rows cannot see these columns
    for g in range(0, GROUP):
        h = h_kv * GROUP + g
        _, _, _, _, lse_base, drop_row, drop_stride, drop_col = _sequence(CuQ, CuK, b, h, H, L, S, TQ, TK, VARLEN)
        q_base = Q + b * stride_qb + h * stride_qh + q_start * stride_qm
        do_base = DO + b * stride_dob + h * stride_doh + q_start * stride_dom
        mask_ptrs = Mask + b * stride_mb + h * stride_mh + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
        for start_m in range(lo, L, BLOCK_M):
            rows = start_m + offs_m
            q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=(rows[:, None] < L) & (offs_d[None, :] < D), other=0.0)  # fmt: skip
            s = _score_block(
                q, k_ptrs, mask_ptrs + start_m * stride_mm, rows, offs_n, start_n, L, S, D, qk_scale,
                stride_kn, stride_mn, IS_CAUSAL, MASK_KIND, BLOCK_D, ALLOW_TF32,
            )  # fmt: skip
            lse = tl.load(Lse + lse_base + rows, mask=rows < L, other=float("inf"))
            p = tl.math.exp2(s - lse[:, None])  # (BLOCK_M, BLOCK_N); 0 where masked
            do = tl.load(do_base + rows[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                         mask=(rows[:, None] < L) & (offs_dv[None, :] < DV), other=0.0)  # fmt: skip
            delta = tl.load(Delta + lse_base + rows, mask=rows < L, other=0.0)
            dp = tl.dot(do, tl.trans(v), input_precision="tf32" if ALLOW_TF32 else "ieee")  # (BLOCK_M, BLOCK_N)
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, drop_row + rows, drop_col + cols, drop_stride, dropout_p)
                p_dropped = tl.where(keep, p / (1.0 - dropout_p), 0.0)
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            else:
                p_dropped = p
            dv += tl.dot(tl.trans(p_dropped).to(do.dtype), do, input_precision="tf32" if ALLOW_TF32 else "ieee")
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision="tf32" if ALLOW_TF32 else "ieee")

    dk_ptrs = DK + cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=(cols[:, None] < S) & (offs_d[None, :] < D))
    dv_ptrs = DVout + cols[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd
    tl.store(dv_ptrs, dv.to(DVout.dtype.element_ty), mask=(cols[:, None] < S) & (offs_dv[None, :] < DV))


@triton.jit
def attn_bwd_dq(
    Q, K, V, Mask, DO, Lse, Delta, DQ, Seed, CuQ, CuK,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, GROUP, L, S, D, DV, TQ, TK, sm_scale, dropout_p,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALLOW_TF32: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    h_kv = h // GROUP
    q_start, L, k_start, S, lse_base, drop_row, drop_stride, drop_col = _sequence(
        CuQ, CuK, b, h, H, L, S, TQ, TK, VARLEN
    )
    if start_m * BLOCK_M >= L:  # variable length: the grid covers the longest sequence
        return
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    Q += b * stride_qb + h * stride_qh + q_start * stride_qm
    DO += b * stride_dob + h * stride_doh + q_start * stride_dom
    DQ += b * stride_dqb + h * stride_dqh + q_start * stride_dqm
    K += b * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V += b * stride_vb + h_kv * stride_vh + k_start * stride_vn
    q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=(rows[:, None] < L) & (offs_d[None, :] < D), other=0.0)  # fmt: skip
    do = tl.load(DO + rows[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                 mask=(rows[:, None] < L) & (offs_dv[None, :] < DV), other=0.0)  # fmt: skip
    lse = tl.load(Lse + lse_base + rows, mask=rows < L, other=float("inf"))
    delta = tl.load(Delta + lse_base + rows, mask=rows < L, other=0.0)
    k_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    vt_ptrs = V + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd
    mask_ptrs = Mask + b * stride_mb + h * stride_mh + rows[:, None] * stride_mm + offs_n[None, :] * stride_mn
    seed = tl.load(Seed) if HAS_DROPOUT else 0
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = sm_scale * LOG2E
    hi = tl.minimum(S, (start_m + 1) * BLOCK_M) if IS_CAUSAL else S
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        s = _score_block(
            q, k_ptrs, mask_ptrs, rows, offs_n, start_n, L, S, D, qk_scale, stride_kn, stride_mn,
            IS_CAUSAL, MASK_KIND, BLOCK_D, ALLOW_TF32,
        )  # fmt: skip
        p = tl.math.exp2(s - lse[:, None])
        vt = tl.load(vt_ptrs + start_n * stride_vn, mask=(offs_dv[:, None] < DV) & (cols[None, :] < S), other=0.0)
        dp = tl.dot(do, vt, input_precision="tf32" if ALLOW_TF32 else "ieee")  # (BLOCK_M, BLOCK_N)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, drop_row + rows, drop_col + cols, drop_stride, dropout_p)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        k = tl.trans(tl.load(k_ptrs + start_n * stride_kn, mask=(offs_d[:, None] < D) & (cols[None, :] < S), other=0.0))
        dq += tl.dot(ds.to(k.dtype), k, input_precision="tf32" if ALLOW_TF32 else "ieee")
    dq_ptrs = DQ + rows[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=(rows[:, None] < L) & (offs_d[None, :] < D))
