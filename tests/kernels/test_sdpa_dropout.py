"""Dropout: reproducible for a seed, the right kept fraction, and gradients that use the same mask.

The keep mask a backend drew is read back exactly by attending over an identity ``value``: the output
is then the dropped, rescaled attention weights themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
from attention_checks import CPU_BACKENDS, only

import kernels
from kernels.reference import attention_reference

pytestmark = pytest.mark.parametrize("backend", CPU_BACKENDS)

P = 0.3


def _qkv(seed: int = 0, B: int = 2, H: int = 4, L: int = 64, S: int = 48, E: int = 16):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, E, generator=gen) for n in (L, S, S))


def _attend(backend, seed, q, k, v, **kwargs):
    torch.manual_seed(seed)
    with only(backend):
        return kernels.scaled_dot_product_attention(q, k, v, dropout_p=P, **kwargs)


def _drawn_keep_mask(backend, seed, q, k, **kwargs):
    """The dropped, rescaled weights the backend used for ``seed``, and its keep mask."""
    S = k.size(-2)
    identity = torch.eye(S).expand(*k.shape[:-1], S)  # value = I: output row i = weights of row i
    weights = _attend(backend, seed, q, k, identity, **kwargs)  # (B, H, L, S)
    return weights, weights != 0


@pytest.mark.parametrize("is_causal", [False, True])
def test_same_seed_same_result(backend, is_causal):
    q, k, v = (t.requires_grad_() for t in _qkv())
    grad = torch.randn(2, 4, 64, 16)
    results = []
    for seed in (7, 7, 8):
        out = _attend(backend, seed, q, k, v, is_causal=is_causal)
        grads = torch.autograd.grad(out, (q, k, v), grad)
        results.append((out, *grads))
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(results[0][0], results[2][0]), "a different seed must draw a different mask"


def test_kept_fraction_and_scaling(backend):
    q, k, _ = _qkv(B=4, L=64, S=64)
    weights, keep = _drawn_keep_mask(backend, 3, q, k)
    n = keep.numel()
    kept = keep.float().mean().item()
    sigma = math.sqrt(P * (1 - P) / n)
    assert abs(kept - (1 - P)) < 5 * sigma, f"kept {kept:.4f} of {n}, expected {1 - P} +- {5 * sigma:.4f}"
    probs = attention_reference(q.double(), k.double(), torch.eye(64, dtype=torch.float64).expand(4, 4, 64, 64))
    torch.testing.assert_close(weights[keep].double(), probs[keep] / (1 - P), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("S", [48, 45])  # 45: keys not a multiple of the four a Philox call serves (TRITON)
def test_gradients_match_reference_with_the_same_mask(backend, is_causal, S):
    q, k, v = _qkv(seed=1, S=S)
    _, keep = _drawn_keep_mask(backend, 11, q, k, is_causal=is_causal)
    grad = torch.randn(2, 4, 64, 16, dtype=torch.float64)

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = _attend(backend, 11, *leaves, is_causal=is_causal)
    ours = (out, *torch.autograd.grad(out, leaves, grad.float()))

    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out = attention_reference(*ref_leaves, dropout_p=P, is_causal=is_causal, dropout_mask=keep)
    ref = (ref_out, *torch.autograd.grad(ref_out, ref_leaves, grad))
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_no_dropout_when_p_is_zero(backend):
    q, k, v = _qkv()
    torch.manual_seed(0)
    with only(backend):
        a = kernels.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    torch.testing.assert_close(a, attention_reference(q, k, v))


@pytest.mark.parametrize("is_causal", [False, True])
def test_packed_sequences_keep_their_fraction_with_the_right_scale(backend, is_causal):
    """Variable-length attention with dropout (the layers' packed paths): each sequence's weights, read back through
    one-hot values, are its reference weights scaled by 1 / (1 - p') where kept, with 1 - p' kept; the same seed
    draws the same; on TORCH (CPU) no Bernoulli draw (`kernels.dropout`'s masks: packed tokens cannot follow
    torch's stream)."""
    from kernels.dropout_masks import keep_mask

    lengths = [37, 64, 5, 50]
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))
    T, H, E, S = sum(lengths), 4, 16, max(lengths)
    q, k = torch.randn(T, H, E), torch.randn(T, H, E)
    one_hot = torch.cat([torch.eye(n, S) for n in lengths])[:, None].expand(T, H, S)  # key j of a sequence -> e_j

    def weights(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with only(backend):
            return kernels.varlen_attention(q, k, one_hot, cu, cu, dropout_p=P, is_causal=is_causal)

    with torch.profiler.profile() as prof:
        drawn = weights(21)
    assert torch.equal(drawn, weights(21)) and not torch.equal(drawn, weights(22))
    scale = keep_mask((1,), P)[1] if backend is kernels.Backend.TORCH else 1 / (1 - P)
    if backend is kernels.Backend.TORCH:
        assert "aten::bernoulli_" not in {e.name for e in prof.events()}
    kept = []
    for b, n in enumerate(lengths):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        mine = drawn[rows, :, :n].transpose(0, 1)  # (H, n, n)
        probs = attention_reference(q[rows].transpose(0, 1).double(), k[rows].transpose(0, 1).double(),
                                    torch.eye(n, dtype=torch.float64), is_causal=is_causal)  # fmt: skip
        keep = mine != 0
        torch.testing.assert_close(mine[keep].double(), probs[keep] * scale, rtol=1e-5, atol=1e-7)
        assert not drawn[rows, :, n:].any()  # nothing past the sequence's own keys
        kept.append(keep[probs > 0])
    kept = torch.cat(kept)
    sigma = math.sqrt(P * (1 - P) / kept.numel())
    assert abs(kept.float().mean().item() - (1 - P)) < 5 * sigma
