"""kernels.decode_attention: the newest queries over a key/value cache, every backend (TRITON: the split-key decode
kernel under the interpreter), against float64 attention on each sequence's cached keys."""

from __future__ import annotations

import re

import pytest
import torch
from attention_checks import CPU_BACKENDS, only, skip_if_unavailable

import kernels
from kernels import sliding_window
from kernels.reference import attention_reference

pytestmark = pytest.mark.parametrize("backend", CPU_BACKENDS)


@pytest.mark.parametrize(
    "B,H,Hk,T,max_len,D",
    [(2, 4, 4, 1, 600, 32), (3, 8, 2, 3, 300, 24), (2, 2, 1, 5, 40, 16), (1, 2, 2, 1, 257, 64), (1, 8, 1, 3, 300, 32)],
    ids=str,
)
def test_equals_attention_over_each_sequences_keys(backend, B, H, Hk, T, max_len, D):
    """Several key splits (max_len > 256), GQA (heads sharing a key head read it once), T > 1 (bottom-right
    causal among the new tokens), head dims 16..64 incl. 24, a sequence holding only its new tokens, more query rows
    per key head than the kernel's 16-row minimum (8 heads x 3 tokens: a 32-row block)."""
    kc, vc = torch.randn(B, Hk, max_len, D), torch.randn(B, Hk, max_len, D)
    lengths = torch.randint(T, max_len + 1, (B,))
    lengths[0] = T
    q = torch.randn(B, H, T, D)
    skip_if_unavailable(backend, q)
    with only(backend):
        out = kernels.decode_attention(q, kc, vc, lengths, enable_gqa=Hk != H)
    for b in range(B):
        n = int(lengths[b])
        causal = sliding_window(T, n, None, 0, lower_right=True).materialize()
        ref = attention_reference(*(t[b : b + 1].double() for t in (q, kc[:, :, :n], vc[:, :, :n])), attn_mask=causal,
                                  enable_gqa=Hk != H)  # fmt: skip
        torch.testing.assert_close(out[b : b + 1].double(), ref, rtol=1e-4, atol=1e-5)


def test_empty_cache_gives_zeros(backend):
    kc = vc = torch.randn(2, 2, 50, 16)
    q = torch.randn(2, 2, 1, 16)
    skip_if_unavailable(backend, q)
    with only(backend):
        out = kernels.decode_attention(q, kc, vc, torch.tensor([0, 7]))
    assert torch.isfinite(out).all() and (out[0] == 0).all() and (out[1] != 0).any()


@pytest.mark.parametrize("length", [0, 1, 29, 50])
def test_sequences_of_one_length(backend, length):
    """Every sequence as long (the common batch decode; on CPU the unmasked path over the slots in use), the
    cache empty, one key, part full, full."""
    kc, vc = torch.randn(3, 2, 50, 16), torch.randn(3, 2, 50, 16)
    q = torch.randn(3, 2, 1, 16)
    skip_if_unavailable(backend, q)
    with only(backend):
        out = kernels.decode_attention(q, kc, vc, torch.full((3,), length))
    if length == 0:
        assert (out == 0).all()
        return
    ref = attention_reference(q.double(), kc[:, :, :length].double(), vc[:, :, :length].double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_gradients_flow_on_the_mask_path(backend):
    """The fused decode kernel computes no gradients: with inputs that require grad, another backend serves the
    call (the dispatcher says why) and gradients equal attention on the cached keys."""
    q = torch.randn(1, 2, 1, 16, requires_grad=True)
    kc = torch.randn(1, 2, 9, 16, requires_grad=True)
    with (
        only(backend)
        if backend is not kernels.Backend.TRITON
        else kernels.sdpa_kernel([backend, kernels.Backend.TORCH])
    ):
        out = kernels.decode_attention(q, kc, kc, torch.tensor([6]))
    out.sum().backward()
    assert (kc.grad[:, :, 6:] == 0).all() and (kc.grad[:, :, :6] != 0).any()


ERRORS = [
    ({"lengths": torch.tensor([3.0, 4.0])}, ValueError, "lengths must be an integer tensor (B,) = (2,)"),
    ({"lengths": torch.tensor([3])}, ValueError, "lengths must be an integer tensor (B,) = (2,)"),
    ({"query": torch.randn(2, 1, 16)}, ValueError, "query must be (B, H, T, E)"),
]


@pytest.mark.parametrize("change,error,message", ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_errors(backend, change, error, message):
    args = {"query": torch.randn(2, 2, 1, 16), "lengths": torch.tensor([3, 4])}
    args.update(change)
    q = args["query"]
    cache = torch.randn(2, 2, 8, 16) if q.dim() == 4 else torch.randn(2, 8, 16)
    with only(backend), pytest.raises(error, match=re.escape(message)):
        kernels.decode_attention(q, cache, cache, args["lengths"])
