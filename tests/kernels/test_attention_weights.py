"""kernels.attention_with_weights: the weights nn.MultiheadAttention returns, and an output made from them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels


@pytest.mark.parametrize("is_causal", [False, True])
def test_weights_are_the_softmax_and_output_matches(is_causal):
    q, k, v = (torch.randn(2, 3, n, 8, dtype=torch.float64) for n in (7, 11, 11))
    mask = None if is_causal else torch.randn(2, 1, 7, 11, dtype=torch.float64)
    out, weights = kernels.attention_with_weights(q, k, v, attn_mask=mask, is_causal=is_causal)
    scores = q @ k.transpose(-2, -1) / 8**0.5 + (0 if mask is None else mask)
    if is_causal:
        scores = scores.masked_fill(~torch.ones(7, 11, dtype=torch.bool).tril(), -torch.inf)
    torch.testing.assert_close(weights, scores.softmax(-1))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal))


def test_gqa_and_gradients():
    q = torch.randn(2, 6, 5, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 8, requires_grad=True) for _ in range(2))
    out, _ = kernels.attention_with_weights(q, k, v, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_output_is_made_from_the_returned_weights():
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    torch.manual_seed(0)
    out, weights = kernels.attention_with_weights(q, k, v, dropout_p=0.5)
    torch.testing.assert_close(out, weights @ v)
    assert (weights == 0).float().mean() > 0.3  # dropped entries are in the returned weights
    torch.manual_seed(0)
    again, _ = kernels.attention_with_weights(q, k, v, dropout_p=0.5)
    assert torch.equal(out, again)


def test_empty_rows_are_zero():
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[2] = False
    out, weights = kernels.attention_with_weights(q, k, v, attn_mask=keep)
    assert (out[0, 0, 2] == 0).all() and (weights[0, 0, 2] == 0).all() and torch.isfinite(out).all()


def test_nested_inputs_are_refused():
    x = torch.nested.nested_tensor([torch.randn(3, 2, 8)], layout=torch.jagged).transpose(1, 2)
    with pytest.raises(ValueError, match="attention weights cannot be returned for nested inputs"):
        kernels.attention_with_weights(x, x, x)
