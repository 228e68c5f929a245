r"""Attention of a few new queries over a long key/value cache (flash-decoding): the keys are split across programs,
each computing a partial softmax, and a second kernel merges them (`attn_decode_combine`: one launch instead of a
dozen torch operations, each reading the partials again; a small model's decoding step is bound by launches).

Program ``(split, batch x key/value head)`` takes the ``T * GROUP`` query rows that share its key/value head (the
``T`` newest tokens of each of the ``GROUP`` query heads: row ``r`` is token ``r // GROUP`` of head
``h_kv * GROUP + r % GROUP``), so one block of keys feeds every query that reads it, and walks the key blocks of its
split. The cache holds ``lengths[b]`` keys of sequence ``b`` (the new ones included); token ``t`` sees the keys
``j <= lengths[b] - T + t`` (bottom-right causal). With scores in log2 units (c = scale * log2(e)):

    m_s = max_j c q.k_j,   l_s = sum_j 2^(c q.k_j - m_s),   acc_s = sum_j 2^(c q.k_j - m_s) v_j      (per split s)
    out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s,     M = max_s m_s                          (combine)

A split with no keys writes m = -inf, l = 0; a row with no keys at all returns 0. Inference only (no backward).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E


@triton.jit
def attn_decode_split(
    Q, K, V, Lengths, Acc, M, L_sum,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    HK, GROUP, T, D, DV, split_len, sm_scale,
    PRECISION: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Partial softmax of one key split: ``Acc (B * Hk, splits, BLOCK_M, BLOCK_DV)``, ``M``/``L_sum`` ``(.., BLOCK_M)``
    in float32, rows as in the module docstring."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HK).to(tl.int64)
    h_kv = bh % HK
    S = tl.load(Lengths + b).to(tl.int32)
    rows = tl.arange(0, BLOCK_M)
    t = rows // GROUP
    h = h_kv * GROUP + rows % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < T * GROUP
    q_ptrs = Q + b * stride_qb + h[:, None] * stride_qh + t[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # (BLOCK_M, BLOCK_D)
    K += b * stride_kb + h_kv * stride_kh
    V += b * stride_vb + h_kv * stride_vh
    last = S - T + t  # the last key each row may see
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, S)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        in_keys = cols < hi
        if EVEN_D:
            k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :], mask=in_keys[:, None], other=0.0)
            v = tl.load(V + cols[:, None] * stride_vn + offs_dv[None, :], mask=in_keys[:, None], other=0.0)
        else:
            k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :], mask=in_keys[:, None] & (offs_d[None, :] < D),
                        other=0.0)  # fmt: skip
            v = tl.load(V + cols[:, None] * stride_vn + offs_dv[None, :],
                        mask=in_keys[:, None] & (offs_dv[None, :] < DV), other=0.0)  # fmt: skip
        x = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        x = tl.where(in_keys[None, :] & (cols[None, :] <= last[:, None]), x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(x * qk_scale - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    out = (bh.to(tl.int64) * tl.num_programs(0) + split) * BLOCK_M
    # the padding rows (a block holds at least 16) are never combined: not written
    tl.store(Acc + (out + rows)[:, None] * BLOCK_DV + offs_dv[None, :], acc, mask=row_ok[:, None])
    tl.store(M + out + rows, m_i, mask=row_ok)
    tl.store(L_sum + out + rows, l_i, mask=row_ok)


@triton.jit
def attn_decode_combine(
    Acc, M, L_sum, Out, stride_ob, stride_oh, stride_ot, HK, GROUP, T, DV, splits,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Merge the partial softmaxes of one ``batch x key/value head`` (one program each) over its ``splits`` (the
    formula in the module docstring, online: one pass over the splits) into ``Out (B, H, T, DV)``, in its dtype."""
    bh = tl.program_id(0)
    b = (bh // HK).to(tl.int64)
    h_kv = bh % HK
    rows = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < T * GROUP
    m_run = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_run = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for split in range(0, splits):
        base = (bh.to(tl.int64) * splits + split) * BLOCK_M
        m_s = tl.load(M + base + rows, mask=row_ok, other=float("-inf"))
        l_s = tl.load(L_sum + base + rows, mask=row_ok, other=0.0)
        a_s = tl.load(Acc + (base + rows)[:, None] * BLOCK_DV + offs_dv[None, :], mask=row_ok[:, None], other=0.0)
        m_new = tl.maximum(m_run, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no keys so far: both weights 0
        old, new = tl.math.exp2(m_run - m_safe), tl.math.exp2(m_s - m_safe)
        l_run = l_run * old + l_s * new
        acc = acc * old[:, None] + a_s * new[:, None]
        m_run = m_new
    out = acc / tl.where(l_run == 0.0, 1.0, l_run)[:, None]  # a row with no keys at all: 0
    t = rows // GROUP
    h = h_kv * GROUP + rows % GROUP
    ptrs = Out + b * stride_ob + h[:, None] * stride_oh + t[:, None] * stride_ot + offs_dv[None, :]
    tl.store(ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
