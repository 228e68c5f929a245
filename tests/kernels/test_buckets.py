"""The buckets of packed sequences on the TORCH/MATH backends (`kernels._nested.plan`): which need a mask tensor.

A mask makes torch's kernels compute a causal bucket's whole square; where padding cannot reach a real token the
bucket runs unmasked (numerics of such buckets, forward and gradients: test_sdpa_nested.py, test_varlen.py).
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels._nested import band_for, plan
from kernels.reference import attention_reference


def masks(q_lens, k_lens, is_causal):
    p = plan(tuple(q_lens), tuple(k_lens), band_for(is_causal, None), torch.device("cpu"))
    return [(b.mask is not None, b.causal) for b in p.buckets]


def test_causal_self_attention_of_different_lengths_runs_unmasked():
    # one bucket (the lengths are close), causal without a mask tensor: torch skips the blocks above the diagonal
    assert masks([60, 64, 70, 66], [60, 64, 70, 66], True) == [(False, True)]


def test_queries_of_different_lengths_over_as_many_keys_run_unmasked():
    assert masks([3, 9, 5], [12, 12, 12], False) == [(False, False)]


@pytest.mark.parametrize(
    "q_lens, k_lens, is_causal",
    [
        ([8, 8, 8], [12, 10, 12], False),  # padded keys a real query would see
        ([9, 6], [7, 9], True),  # a sequence with more queries than keys: its last queries would see padded keys
    ],
)
def test_a_mask_where_padding_would_be_seen(q_lens, k_lens, is_causal):
    assert masks(q_lens, k_lens, is_causal) == [(True, False)]


def test_unmasked_causal_bucket_equals_each_sequence_alone_with_gradients():
    torch.manual_seed(0)
    lengths = [29, 33, 31, 35]
    q, k, v = (torch.randn(sum(lengths), 2, 8, requires_grad=True) for _ in range(3))
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))
    with kernels.sdpa_kernel([kernels.Backend.TORCH]):
        out = kernels.varlen_attention(q, k, v, cu, cu, is_causal=True)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    refs, start = [], 0
    for n in lengths:
        part = [t[start : start + n].detach().double().transpose(0, 1).requires_grad_() for t in (q, k, v)]
        ref = attention_reference(*part, is_causal=True)
        grads = torch.autograd.grad(ref, part, grad[start : start + n].double().transpose(0, 1))
        refs.append((ref.transpose(0, 1), [g.transpose(0, 1) for g in grads]))
        start += n
    torch.testing.assert_close(out, torch.cat([r for r, _ in refs]).float(), rtol=1e-5, atol=1e-5)
    for i in range(3):
        torch.testing.assert_close(got[i], torch.cat([g[i] for _, g in refs]).float(), rtol=1e-4, atol=1e-5)
