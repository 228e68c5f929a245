"""The layers' dropout modules (`layers._dropout.Dropout`): torch's numbers, drawn in one pass on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import layers
from layers._dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.0])
def test_same_numbers_and_gradients_as_nn_dropout(p):
    x = torch.randn(7, 33, 19, requires_grad=True)
    grad = torch.randn(7, 33, 19)
    results = []
    for module in (nn.Dropout(p), Dropout(p)):
        torch.manual_seed(11)
        out = module(x)
        results.append((out, *torch.autograd.grad(out, x, grad)))
    for theirs, ours in zip(*results, strict=True):
        assert torch.equal(ours, theirs)
    assert p == 0.0 or (results[1][0] == 0).any()  # something was dropped


def test_the_one_pass_path_is_taken_in_training_only():
    x = torch.randn(4, 8, requires_grad=True)
    assert type(Dropout(0.2)(x).grad_fn).__name__ == "NativeDropoutBackward0"
    assert type(nn.Dropout(0.2)(x).grad_fn).__name__ != "NativeDropoutBackward0"
    assert Dropout(0.2).eval()(x) is x  # evaluation: the identity, as torch's
    y = torch.randn(4, 8)
    torch.manual_seed(2)
    expected = nn.Dropout(0.3, inplace=True)(y.clone())
    torch.manual_seed(2)
    assert torch.equal(Dropout(0.3, inplace=True)(y.clone()), expected)  # in place: torch's path


def test_nested_input_goes_through_torchs_dropout():
    x = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(5, 8)], layout=torch.jagged)
    torch.manual_seed(4)
    expected = nn.Dropout(0.5)(x)
    torch.manual_seed(4)
    out = Dropout(0.5)(x)
    assert all(torch.equal(a, b) for a, b in zip(out.unbind(), expected.unbind(), strict=True))


def test_layers_hold_it_and_revert_gives_torchs_back():
    layer = layers.TransformerDecoderLayer(16, 2, 32, batch_first=True)
    drops = [layer.dropout, layer.dropout1, layer.dropout2, layer.dropout3]
    assert all(type(m) is Dropout for m in drops)
    assert repr(layer.dropout) == repr(nn.Dropout(0.1))
    assert type(layers.CausalSelfAttention(2, 16, dropout=0.1).resid_dropout) is Dropout
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32), nn.Dropout(0.2))
    layers.convert(model)
    assert type(model[0].dropout1) is Dropout and type(model[1]) is nn.Dropout  # the model's own: untouched
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
