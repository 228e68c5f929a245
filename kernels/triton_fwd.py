r"""Fused attention forward (FlashAttention-2, Dao 2023): one program per (query block, batch x head).

For a query row q and key blocks K_j (scores in log2 units, c = scale * log2(e)):

    s_j   = c * q K_j^T + log2(e) * bias_j          (-inf where masked: bool mask, causal, padding)
    m_j   = max(m_{j-1}, max(s_j))                   running maximum
    l_j   = l_{j-1} 2^(m_{j-1} - m_j) + sum 2^(s_j - m_j)
    acc_j = acc_{j-1} 2^(m_{j-1} - m_j) + (2^(s_j - m_j) * keep_j / (1 - p)) V_j
    out   = acc / l,     lse = m + log2(l)   (kept for the backward pass)

A row with nothing to attend to keeps m = -inf: the maximum is guarded (0 instead of -inf, so no inf - inf),
l stays 0, and the row returns 0 with lse = +inf (so the backward pass recomputes probabilities 2^(s - lse) = 0).
Dropout keeps an element with probability 1 - p from Philox ``tl.rand(seed, offset)``, offset = the element's
index in (B, H, L, S): the backward pass regenerates the same mask. Causal is top-left aligned (row i sees
columns 0..i), so a query block stops at its last row's column. Every operand is read through its own strides:
broadcast mask dimensions have stride 0 and are never materialised.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr global: the compiler reads nothing else


@triton.jit
def _score_block(
    q, k_ptrs, mask_ptrs, offs_m, offs_n, start_n, L, S, D, qk_scale,
    stride_kn, stride_mn,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, BLOCK_D: tl.constexpr, ALLOW_TF32: tl.constexpr,
):  # fmt: skip
    """Scores of one key block in log2 units, ``-inf`` where a row may not attend. Shared by both passes."""
    cols = start_n + offs_n
    offs_d = tl.arange(0, BLOCK_D)
    k = tl.load(k_ptrs + start_n * stride_kn, mask=(offs_d[:, None] < D) & (cols[None, :] < S), other=0.0)
    qk = tl.dot(q, k, input_precision="tf32" if ALLOW_TF32 else "ieee") * qk_scale  # (BLOCK_M, BLOCK_N)
    valid = (cols[None, :] < S) & (offs_m[:, None] < L)
    if IS_CAUSAL:
        valid = valid & (cols[None, :] <= offs_m[:, None])
    if MASK_KIND == 1:  # bool: nonzero = may attend
        allowed = tl.load(mask_ptrs + start_n * stride_mn, mask=valid, other=0)
        valid = valid & (allowed != 0)
    if MASK_KIND == 2:  # additive
        bias = tl.load(mask_ptrs + start_n * stride_mn, mask=valid, other=0.0).to(tl.float32)
        qk = qk + bias * LOG2E
    return tl.where(valid, qk, float("-inf"))


@triton.jit
def _dropout_keep(seed, row_ids, col_ids, row_stride, dropout_p):
    """Philox keep mask of a (BLOCK_M, BLOCK_N) tile; offset = row id * row stride + column id, unique per
    element (dense: rows of (B*H, L), stride S; variable length: rows (token, head), stride total keys)."""
    return tl.rand(seed, row_ids[:, None] * row_stride + col_ids[None, :]) >= dropout_p


@triton.jit
def _sequence(CuQ, CuK, b, h, H, L, S, TQ, TK, VARLEN: tl.constexpr):
    """Where batch entry b lives: (first query token, query length, first key token, key length, start of its
    log-sum-exp row, dropout row id base, dropout row stride, first key column id).

    Dense batches index (B, H, L, S) through strides (tokens start at 0); variable-length batches read the
    offsets cu_seqlens (``CuQ``/``CuK``) and index the packed (T, H, D) tensors, log-sum-exp (H, TQ).
    """
    if VARLEN:
        q_start = tl.load(CuQ + b)
        k_start = tl.load(CuK + b)
        L = tl.load(CuQ + b + 1) - q_start
        S = tl.load(CuK + b + 1) - k_start
        return q_start, L, k_start, S, h * TQ + q_start, q_start * H + h, TK, k_start
    return 0, L, 0, S, (b * H + h) * L, (b * H + h) * L, S, 0


@triton.jit
def attn_fwd(
    Q, K, V, Mask, Out, Lse, Seed, CuQ, CuK,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_ob, stride_oh, stride_om, stride_od,
    H, GROUP, L, S, D, DV, TQ, TK, sm_scale, dropout_p,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALLOW_TF32: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    h_kv = h // GROUP  # grouped-query attention: GROUP query heads share a key/value head
    q_start, L, k_start, S, lse_base, drop_row, drop_stride, drop_col = _sequence(
        CuQ, CuK, b, h, H, L, S, TQ, TK, VARLEN
    )
    if start_m * BLOCK_M >= L:  # variable length: the grid covers the longest sequence
        return
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    Q += b * stride_qb + h * stride_qh + q_start * stride_qm
    Out += b * stride_ob + h * stride_oh + q_start * stride_om
    K += b * stride_kb + h_kv * stride_kh + k_start * stride_kn
    V += b * stride_vb + h_kv * stride_vh + k_start * stride_vn
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=(offs_m[:, None] < L) & (offs_d[None, :] < D), other=0.0)  # fmt: skip
    k_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    mask_ptrs = Mask + b * stride_mb + h * stride_mh + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
    seed = tl.load(Seed) if HAS_DROPOUT else 0

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    qk_scale = sm_scale * LOG2E
    hi = tl.minimum(S, (start_m + 1) * BLOCK_M) if IS_CAUSAL else S
    for start_n in range(0, hi, BLOCK_N):
        s = _score_block(
            q, k_ptrs, mask_ptrs, offs_m, offs_n, start_n, L, S, D, qk_scale, stride_kn, stride_mn,
            IS_CAUSAL, MASK_KIND, BLOCK_D, ALLOW_TF32,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row masked so far: no inf - inf
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, drop_row + offs_m, drop_col + start_n + offs_n, drop_stride, dropout_p)
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        v = tl.load(
            v_ptrs + start_n * stride_vn, mask=((start_n + offs_n)[:, None] < S) & (offs_dv[None, :] < DV), other=0.0
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="tf32" if ALLOW_TF32 else "ieee")
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    o_ptrs = Out + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_dv[None, :] < DV))
    tl.store(Lse + lse_base + offs_m, lse, mask=offs_m < L)
