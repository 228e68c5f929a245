"""kernels.varlen_attention: packed sequences with offsets equal attention on each sequence alone."""

from __future__ import annotations

import re

import pytest
import torch
from attention_checks import VARLEN_BACKENDS, assert_close_to_reference, leaf, only, torch_sdpa

import kernels
from kernels.reference import attention_reference

pytestmark = pytest.mark.parametrize("backend", VARLEN_BACKENDS)


def offsets(lengths):
    return torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))


def run_varlen(backend, q, k, v, q_lens, k_lens, grad, dtype, **kwargs):
    leaves = [leaf(t, dtype) for t in (q, k, v)]
    with only(backend):
        out = kernels.varlen_attention(*leaves, offsets(q_lens), offsets(k_lens), **kwargs)
    out.backward(grad.to(dtype))
    return out.detach(), [t.grad for t in leaves]


def run_alone(fn, q, k, v, grad, dtype, **kwargs):
    leaves = [leaf(t, dtype) for t in (q, k, v)]
    out = fn(*(t.transpose(0, 1)[None] for t in leaves), **kwargs)[0].transpose(0, 1)  # (L, H, Ev)
    out.backward(grad.to(dtype))
    return {
        "out": out.detach(),
        **{f"grad_{n}": t.grad for n, t in zip(("query", "key", "value"), leaves, strict=True)},
    }


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
def test_each_sequence_equals_attention_alone(backend, is_causal, gqa):
    q_lens, k_lens = [1, 37, 0, 9, 9], [6, 37, 3, 2, 9]
    hq, hk = (6, 2) if gqa else (3, 3)
    q = torch.randn(sum(q_lens), hq, 16, dtype=torch.float64)
    k, v = (torch.randn(sum(k_lens), hk, 16, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(sum(q_lens), hq, 16, dtype=torch.float64)
    kwargs = {"is_causal": is_causal, "enable_gqa": gqa}
    out, grads = run_varlen(backend, q, k, v, q_lens, k_lens, grad, torch.float32, **kwargs)
    qo, ko = offsets(q_lens).tolist(), offsets(k_lens).tolist()
    for b in range(len(q_lens)):
        qs, ks = slice(qo[b], qo[b + 1]), slice(ko[b], ko[b + 1])
        ours = {"out": out[qs], "grad_query": grads[0][qs], "grad_key": grads[1][ks], "grad_value": grads[2][ks]}
        if qs.start == qs.stop:
            continue
        theirs = run_alone(torch_sdpa, q[qs], k[ks], v[ks], grad[qs], torch.float32, **kwargs)
        ref = run_alone(attention_reference, q[qs], k[ks], v[ks], grad[qs], torch.float64, **kwargs)
        assert_close_to_reference(ours, theirs, ref, torch.float32)


def test_matches_the_nested_form(backend):
    lengths = [4, 1, 12]
    q, k, v = (torch.randn(17, 2, 8) for _ in range(3))
    with only(backend):
        packed = kernels.varlen_attention(q, k, v, offsets(lengths), offsets(lengths), is_causal=True)
        nested = [
            torch.nested.nested_tensor_from_jagged(t, offsets=offsets(lengths)).transpose(1, 2) for t in (q, k, v)
        ]
        via_nested = kernels.scaled_dot_product_attention(*nested, is_causal=True)
    torch.testing.assert_close(packed, via_nested.transpose(1, 2).values())


ERRORS = [
    ({"query": torch.randn(5, 8)}, ValueError, "query must be packed tokens (T, H, E), got shape (5, 8)"),
    ({"cu_q": [0, 5]}, TypeError, "cu_seqlens_q must be an integer tensor of offsets (B + 1,)"),
    ({"cu_q": torch.tensor([0.0, 5.0])}, TypeError, "cu_seqlens_q must be an integer tensor"),
    ({"cu_q": torch.tensor([1, 5])}, ValueError, "cu_seqlens_q must rise from 0 to the token count 5, got [1, 5]"),
    ({"cu_k": torch.tensor([0, 4, 3, 6])}, ValueError, "cu_seqlens_k must rise from 0 to the token count 6"),
    ({"cu_k": torch.tensor([[0, 6]])}, ValueError, "cu_seqlens_k must be 1-D offsets (B + 1,)"),
    ({"cu_k": torch.tensor([0, 2, 6])}, ValueError, "cu_seqlens_q describes 1 sequences but cu_seqlens_k 2"),
    ({"key": torch.randn(6, 3, 8)}, ValueError, "key (6, 3, 8) and value (6, 2, 8) must agree"),
    ({"dropout_p": 1.0}, ValueError, "dropout_p must be in [0, 1)"),
    ({"query": torch.randn(5, 2, 8).double()}, TypeError, "key has dtype torch.float32 but query has torch.float64"),
]


@pytest.mark.parametrize("change,error,message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors(backend, change, error, message):
    args = {
        "query": torch.randn(5, 2, 8),
        "key": torch.randn(6, 2, 8),
        "value": torch.randn(6, 2, 8),
        "cu_q": torch.tensor([0, 5]),
        "cu_k": torch.tensor([0, 6]),
        "dropout_p": 0.0,
    }
    args.update(change)
    with only(backend), pytest.raises(error, match=re.escape(message)):
        kernels.varlen_attention(
            args["query"], args["key"], args["value"], args["cu_q"], args["cu_k"], dropout_p=args["dropout_p"]
        )


def test_padded_batch_packed_attended_unpacked_equals_masked_dense(backend):
    """Any padding pattern (right, left, in the middle, a fully padded row): packing, varlen attention and
    unpacking equal dense attention with the key padding mask, on the real tokens; padding gives zeros."""
    from layers.packing import pack_padded, unpack_padded

    B, L, H, E = 4, 9, 2, 8
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, 6:] = True  # right
    pad[1, :3] = True  # left
    pad[2, 2:5] = True  # middle
    pad[3] = True  # all padding
    x = {n: torch.randn(B, L, H * E) for n in ("q", "k", "v")}  # (B, L, H*E), as a layer holds them
    packed = {n: pack_padded(t, pad) for n, t in x.items()}
    with only(backend):
        out = kernels.varlen_attention(
            *(packed[n].values.unflatten(-1, (H, E)) for n in ("q", "k", "v")), packed["q"].offsets, packed["k"].offsets
        )
    got = unpack_padded(out.flatten(-2), packed["q"].keep)  # (B, L, H*E)
    dense = [x[n].unflatten(-1, (H, E)).transpose(1, 2) for n in ("q", "k", "v")]  # (B, H, L, E)
    ref = attention_reference(*dense, attn_mask=~pad[:, None, None, :]).transpose(1, 2).flatten(-2)
    keep = ~pad
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-4, atol=1e-5)
    assert (got[pad] == 0).all()
