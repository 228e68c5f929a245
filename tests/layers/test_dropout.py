"""The layers' dropout: torch's ``nn.Dropout`` modules (its draws on dense batches), and on the packed paths the
cheaper masks of `kernels.dropout` (`layers._dropout.packed_dropout`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import layers


def test_layers_hold_torchs_dropout_modules():
    layer = layers.TransformerDecoderLayer(16, 2, 32, batch_first=True)
    assert all(type(m) is nn.Dropout for m in (layer.dropout, layer.dropout1, layer.dropout2, layer.dropout3))
    assert type(layers.CausalSelfAttention(2, 16, dropout=0.1).resid_dropout) is nn.Dropout
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32), nn.Dropout(0.2))
    layers.convert(model)
    assert type(model[0].dropout1) is nn.Dropout and type(model[1]) is nn.Dropout
    layers.revert(model)
    assert type(model[0]) is nn.TransformerEncoderLayer and type(model[0].dropout1) is nn.Dropout


def _padded_batch(E: int = 16):
    x = torch.randn(3, 10, E, requires_grad=True)
    pad = torch.arange(10)[None, :] >= torch.tensor([10, 4, 7])[:, None]  # True = padding
    return x, pad


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_packed_paths_draw_cheaper_masks_reproducibly(kind):
    """Skipping padding, the layers' dropout (attention, residual and feed-forward) draws `kernels.dropout`'s masks:
    no Bernoulli draw at all in a training step, and the same seed gives the same step (outputs, every gradient)."""
    torch.manual_seed(0)
    if kind == "encoder":
        model = layers.TransformerEncoder(layers.TransformerEncoderLayer(16, 2, 32, 0.3, batch_first=True), 2)
    else:
        model = layers.TransformerDecoder(layers.TransformerDecoderLayer(16, 2, 32, 0.3, batch_first=True), 2)
    x, pad = _padded_batch()

    def step(seed: int):
        torch.manual_seed(seed)
        if kind == "encoder":
            out = model(x, src_key_padding_mask=pad)
        else:
            out = model(x, x, tgt_is_causal=True, tgt_key_padding_mask=pad, memory_key_padding_mask=pad)
        return out, *torch.autograd.grad(out.square().sum(), [x, *model.parameters()])

    with torch.profiler.profile() as prof:
        first = step(1)
    assert "aten::bernoulli_" not in {e.name for e in prof.events()}
    assert all(torch.equal(a, b) for a, b in zip(first, step(1), strict=True))
    assert not torch.equal(first[0], step(2)[0])  # another seed, other masks


def test_packed_dropout_calls_a_module_with_hooks():
    """A dropout module with a hook is called as a module on the packed path (its hook sees the call)."""
    layer = layers.TransformerEncoderLayer(16, 2, 32, 0.3, batch_first=True)
    seen = []
    layer.dropout1.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    x, pad = _padded_batch()
    layer(x, src_key_padding_mask=pad)
    assert seen == [torch.Size([21, 16])]  # the 21 real tokens, packed
