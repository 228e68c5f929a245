"""The layers on the fused kernels (Backend.TRITON; under the Triton interpreter without a GPU): the same
outputs and gradients as on Backend.TORCH, dense and nested."""

from __future__ import annotations

import pytest
import torch
from attention_checks import skip_if_unavailable

import kernels
import layers
from kernels import Backend

D, H, N, S = 32, 4, 2, 13


def outputs_and_grads(backend, module, make_out, x):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    with kernels.sdpa_kernel([backend]):
        out = make_out(module, x)
    out.backward(torch.ones_like(out))
    return [out.detach(), x.grad, *(p.grad for p in module.parameters() if p.grad is not None)]


CASES = {
    "MultiheadAttention, bool padding mask": (
        lambda: layers.MultiheadAttention(D, H, batch_first=True),
        lambda m, x: m(x, x, x, key_padding_mask=torch.arange(S) >= torch.tensor([[S], [9]]), need_weights=False)[0],
    ),
    "MultiheadAttention, causal": (
        lambda: layers.MultiheadAttention(D, H, batch_first=True),
        lambda m, x: m(x, x, x, need_weights=False, is_causal=True)[0],
    ),
    "TransformerEncoderLayer, float mask": (
        lambda: layers.TransformerEncoderLayer(D, H, 64, dropout=0.0, batch_first=True),
        lambda m, x: m(x, src_mask=torch.randn(S, S, generator=torch.Generator().manual_seed(0))),
    ),
    "TransformerDecoderLayer": (
        lambda: layers.TransformerDecoderLayer(D, H, 64, dropout=0.0, batch_first=True),
        lambda m, x: m(x, x.flip(1), tgt_is_causal=True),
    ),
    "CausalSelfAttention": (lambda: layers.CausalSelfAttention(H, D, bias=True, is_causal=True), lambda m, x: m(x)),
}


def test_nested_encoder_layer_on_triton_matches_torch_backend():
    """Nested input: the layer's packed tokens go to the variable-length kernel in one launch."""
    skip_if_unavailable(Backend.TRITON, torch.empty(1, 1, 1), varlen=True)
    torch.manual_seed(0)
    layer = layers.TransformerEncoderLayer(D, H, 64, dropout=0.0, batch_first=True)
    results = []
    for backend in (Backend.TRITON, Backend.TORCH):
        parts = [torch.randn(n, D, generator=torch.Generator().manual_seed(n)).requires_grad_() for n in (3, 11, 1)]
        x = torch.nested.as_nested_tensor(parts, layout=torch.jagged)
        layer.zero_grad(set_to_none=True)
        with kernels.sdpa_kernel([backend]):
            out = layer(x, is_causal=True)
        out.values().sum().backward()
        results.append([out.values().detach(), *(p.grad for p in parts), *(p.grad for p in layer.parameters())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_layer_on_triton_matches_torch_backend(case):
    skip_if_unavailable(Backend.TRITON, torch.empty(1, 1, 1))
    make_module, make_out = CASES[case]
    torch.manual_seed(0)
    module = make_module()
    x = torch.randn(N, S, D)
    ours = outputs_and_grads(Backend.TRITON, module, make_out, x)
    reference = outputs_and_grads(Backend.TORCH, module, make_out, x)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
