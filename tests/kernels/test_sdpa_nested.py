"""Jagged nested inputs: each sequence of the batch equals attention on that sequence alone.

Every sequence's output and the gradients of its query, key and value are compared with torch's dense
SDPA on that sequence (same precision) and the float64 reference.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from attention_checks import VARLEN_BACKENDS, assert_close_to_reference, leaf, only, torch_sdpa

import kernels
from kernels.reference import attention_reference

pytestmark = pytest.mark.parametrize("backend", VARLEN_BACKENDS)


def _sequences(lengths, heads, dim):
    """Per-sequence (L_i, H, E) float64 tensors."""
    return [torch.randn(n, heads, dim, dtype=torch.float64) for n in lengths]


def _nested(parts, dtype):
    """Leaves in ``dtype`` and the (B, H, j, E) nested tensor made of them (autograd reaches the leaves)."""
    leaves = [leaf(p, dtype) for p in parts]
    return leaves, torch.nested.as_nested_tensor(leaves, layout=torch.jagged).transpose(1, 2)


def _run_nested(backend, qs, ks, vs, grads, dtype, **kwargs):
    (lq, q), (lk, k), (lv, v) = _nested(qs, dtype), _nested(ks, dtype), _nested(vs, dtype)
    with only(backend):
        out = kernels.scaled_dot_product_attention(q, k, v, **kwargs)
    assert out.is_nested and out.offsets() is q.offsets()
    outs = out.transpose(1, 2).unbind()  # (L_i, H, Ev) each
    sum((o * g.to(dtype)).sum() for o, g in zip(outs, grads, strict=True)).backward()
    return [
        {"out": o.detach(), "grad_query": a.grad, "grad_key": b.grad, "grad_value": c.grad}
        for o, a, b, c in zip(outs, lq, lk, lv, strict=True)
    ]


def _run_dense(fn, q, k, v, grad, dtype, **kwargs):
    """One sequence alone: (L, H, E) tensors as a batch of one (1, H, L, E)."""
    leaves = [leaf(t, dtype) for t in (q, k, v)]
    out = fn(*(t.transpose(0, 1).unsqueeze(0) for t in leaves), **kwargs)[0].transpose(0, 1)  # (L, H, Ev)
    out.backward(grad.to(dtype))
    return {
        "out": out.detach(),
        **{f"grad_{n}": t.grad for n, t in zip(("query", "key", "value"), leaves, strict=True)},
    }


def check_nested(backend, q_lens, k_lens=None, heads=3, kv_heads=None, dim=16, dtype=torch.float32, **kwargs):
    k_lens = q_lens if k_lens is None else k_lens
    qs = _sequences(q_lens, heads, dim)
    ks = _sequences(k_lens, kv_heads or heads, dim)
    vs = _sequences(k_lens, kv_heads or heads, dim)
    grads = [torch.randn(n, heads, dim, dtype=torch.float64) for n in q_lens]
    ours = _run_nested(backend, qs, ks, vs, grads, dtype, **kwargs)
    for i, (q, k, v, g) in enumerate(zip(qs, ks, vs, grads, strict=True)):
        if k.size(0) == 0:  # nothing to attend to: zeros, and no gradient reaches the query
            assert (ours[i]["out"] == 0).all() and (ours[i]["grad_query"] == 0).all()
            continue
        theirs = _run_dense(torch_sdpa, q, k, v, g, dtype, **kwargs)
        ref = _run_dense(attention_reference, q, k, v, g, torch.float64, **kwargs)
        assert_close_to_reference(ours[i], theirs, ref, dtype)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_uneven_lengths(backend, is_causal, dtype):
    check_nested(backend, [1, 300, 2, 37], is_causal=is_causal, dtype=dtype)


def test_one_long_many_short_and_equal_lengths(backend):
    check_nested(backend, [200, 3, 3, 3, 5, 3, 5, 3], is_causal=True)


def test_zero_length_query_sequence(backend):
    check_nested(backend, [0, 4, 7], [3, 4, 5])


def test_zero_length_key_sequence_gives_zeros(backend):
    check_nested(backend, [3, 4], [0, 6])


@pytest.mark.parametrize("is_causal", [False, True])
def test_cross_attention_lengths_differ_per_sequence(backend, is_causal):
    check_nested(backend, [4, 9, 1, 6], [6, 2, 11, 6], is_causal=is_causal)


def test_gqa(backend):
    check_nested(backend, [5, 17, 2], heads=6, kv_heads=2, enable_gqa=True, is_causal=True)


def test_scale_and_head_dim(backend):
    check_nested(backend, [7, 3], dim=40, scale=0.25)


def test_output_keeps_query_offsets(backend):
    (_, q) = _nested(_sequences([3, 8, 1], 2, 8), torch.float32)
    with only(backend):
        out = kernels.scaled_dot_product_attention(q, q, q)
    assert out.shape[2] == q.shape[2]  # the same ragged dimension: the two can be added
    residual = out + q
    assert residual.is_nested and residual.offsets() is q.offsets()


def test_dropout_reproducible(backend):
    q_lens = [5, 12, 1, 12]
    parts = [_sequences(q_lens, 2, 8) for _ in range(3)]
    results = []
    for seed in (4, 4, 5):
        (lq, q), (_, k), (_, v) = (_nested(p, torch.float32) for p in parts)
        torch.manual_seed(seed)
        with only(backend):
            out = kernels.scaled_dot_product_attention(q, k, v, dropout_p=0.4, is_causal=True)
        out.values().sum().backward()
        results.append((out.values().detach(), torch.cat([t.grad for t in lq])))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][0], results[2][0])


def test_strided_nested_input_gives_strided_output(backend):
    """The default layout of torch.nested.nested_tensor (strided) works too: the same numbers and gradients as the
    jagged layout, and the output in the input's layout."""
    parts = [_sequences([5, 2, 9], 2, 8) for _ in range(3)]
    (lq, q), (_, k), (_, v) = (_nested(p, torch.float32) for p in parts)
    leaves = [[leaf(t, torch.float32) for t in p] for p in parts]
    with warnings.catch_warnings():  # torch: the strided layout is a prototype
        warnings.simplefilter("ignore", UserWarning)
        strided = [torch.nested.as_nested_tensor([t.transpose(0, 1) for t in p], layout=torch.strided) for p in leaves]
        with only(backend):
            jagged_out = kernels.scaled_dot_product_attention(q, k, v, is_causal=True)
            strided_out = kernels.scaled_dot_product_attention(*strided, is_causal=True)
        assert strided_out.is_nested and strided_out.layout == torch.strided
        got = [t.transpose(0, 1) for t in strided_out.unbind()]  # (L_i, H, E)
        want = list(jagged_out.transpose(1, 2).unbind())
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
        sum(t.sum() for t in got).backward()
    jagged_out.values().sum().backward()
    for a, b in zip(leaves[0], lq, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_padded_form_for_compile_equals_buckets(backend):
    """While torch.compile traces, lengths cannot be read: the batch is padded to its longest sequence instead of
    bucketed. Both forms give the same outputs and gradients (ragged lengths, empty key sequences, causal, GQA)."""
    from kernels._nested import packed_attention, padded_attention
    from kernels.dispatch import DENSE

    if backend is kernels.Backend.TRITON:
        pytest.skip("TRITON serves packed sequences in one launch, without either form")
    q_lens, k_lens = [3, 40, 0, 7], [5, 40, 2, 0]
    cu_q, cu_k = (torch.nn.functional.pad(torch.tensor(n).cumsum(0), (1, 0)) for n in (q_lens, k_lens))
    base = [torch.randn(sum(q_lens), 4, 8), torch.randn(sum(k_lens), 2, 8), torch.randn(sum(k_lens), 2, 8)]
    grad = torch.randn(sum(q_lens), 4, 8)
    results = []
    for form, lengths in ((packed_attention, (q_lens, k_lens)), (padded_attention, (cu_q, cu_k))):
        leaves = [t.clone().requires_grad_() for t in base]
        out = form(DENSE[backend], *leaves, *lengths, dropout_p=0.0, is_causal=True, scale=None, enable_gqa=True)
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
