"""Keras-style conveniences: get_config/from_config round trips, convert/revert of existing models, repr."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import layers

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True, but self.use_nested_tensor is False")


def silu(x):
    return F.silu(x)


def encoder_layer(**kw):
    return layers.TransformerEncoderLayer(16, 2, 32, **kw)


def decoder_layer(**kw):
    return layers.TransformerDecoderLayer(16, 2, 32, **kw)


LAYERS = {
    "mha": lambda: layers.MultiheadAttention(16, 4),
    "mha options": lambda: layers.MultiheadAttention(
        16, 4, dropout=0.1, bias=False, add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=5, batch_first=True
    ),
    "mha float64": lambda: layers.MultiheadAttention(16, 4, dtype=torch.float64),
    "encoder layer": lambda: encoder_layer(),
    "encoder layer options": lambda: encoder_layer(
        dropout=0.2, activation=silu, layer_norm_eps=1e-6, batch_first=True, norm_first=True, bias=False
    ),
    "encoder": lambda: layers.TransformerEncoder(encoder_layer(activation="gelu"), 3, norm=nn.LayerNorm(16)),
    "encoder no norm": lambda: layers.TransformerEncoder(encoder_layer(), 2, enable_nested_tensor=False),
    "decoder layer": lambda: decoder_layer(norm_first=True),
    "decoder": lambda: layers.TransformerDecoder(decoder_layer(), 2, norm=nn.LayerNorm(16, eps=1e-6)),
    "causal self-attention": lambda: layers.CausalSelfAttention(4, 16, dropout=0.1, is_causal=True),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_config_round_trip(name):
    layer = LAYERS[name]()
    config = layer.get_config()
    restored = type(layer).from_config(json.loads(json.dumps(config)))  # JSON-serialisable
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    a, b = layer.state_dict(), restored.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    restored.load_state_dict(a, strict=True)


def test_config_of_unserialisable_activation_says_why():
    layer = encoder_layer(activation=nn.GELU())
    with pytest.raises(ValueError, match=re.escape("is a module, which a config cannot hold; pass a function")):
        layer.get_config()
    with pytest.raises(ValueError, match="cannot be imported by name"):
        encoder_layer(activation=lambda x: x).get_config()


def test_from_config_errors():
    with pytest.raises(TypeError, match="from_config expects a dict, got list"):
        layers.MultiheadAttention.from_config([16, 4])
    with pytest.raises(ValueError, match=re.escape("dtype 'float99' is not a torch dtype")):
        layers.MultiheadAttention.from_config({"embed_dim": 16, "num_heads": 4, "dtype": "float99"})


class Classifier(nn.Module):
    """A model written the usual way: embedding + nn.TransformerEncoder + head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens, pad):
        h = self.encoder(self.embed(tokens), src_key_padding_mask=pad)
        h = h.masked_fill(pad[..., None], 0.0)
        return self.head(h.sum(1) / (~pad).sum(1, keepdim=True))


@pytest.mark.parametrize("training", [False, True])
def test_convert_keeps_outputs_weights_and_mode(training):
    torch.manual_seed(0)
    model = Classifier().train(training).double()
    tokens = torch.randint(0, 50, (4, 11))
    pad = torch.arange(11) >= torch.tensor([[11], [3], [7], [9]])
    params_before = {n: p for n, p in model.named_parameters()}
    expected = model(tokens, pad)

    assert layers.convert(model) is model
    assert type(model.encoder) is layers.TransformerEncoder
    assert all(type(layer) is layers.TransformerEncoderLayer for layer in model.encoder.layers)
    assert all(type(layer.self_attn) is layers.MultiheadAttention for layer in model.encoder.layers)
    assert {n: p for n, p in model.named_parameters()} == params_before  # the very same tensors
    assert model.training is training and next(model.parameters()).dtype == torch.float64
    torch.testing.assert_close(model(tokens, pad), expected)

    layers.revert(model)
    assert type(model.encoder) is nn.TransformerEncoder
    assert all(type(layer) is nn.TransformerEncoderLayer for layer in model.encoder.layers)
    assert all(type(layer.self_attn) is nn.MultiheadAttention for layer in model.encoder.layers)
    torch.testing.assert_close(model(tokens, pad), expected)


def test_convert_leaves_user_subclasses_and_rejects_non_modules():
    class MyAttention(nn.MultiheadAttention):
        pass

    model = nn.ModuleDict({"mine": MyAttention(8, 2), "plain": nn.MultiheadAttention(8, 2)})
    layers.convert(model)
    assert type(model["mine"]) is MyAttention and type(model["plain"]) is layers.MultiheadAttention
    with pytest.raises(TypeError, match=re.escape("layers.convert expects a torch.nn.Module, got str")):
        layers.convert("model")


def test_repr_is_readable():
    text = repr(layers.MultiheadAttention(16, 4, dropout=0.1, batch_first=True))
    assert text.startswith("MultiheadAttention(\n  16, num_heads=4, dropout=0.1, batch_first=True\n")
    assert repr(layers.CausalSelfAttention(4, 16)).startswith(
        "CausalSelfAttention(\n  num_heads=4, embed_dimension=16, is_causal=False\n"
    )


CONSTRUCTOR_ERRORS = [
    (lambda: layers.TransformerEncoderLayer(10, 4), ValueError, "d_model=10 is not divisible by nhead=4"),
    (lambda: layers.TransformerEncoderLayer(8, 2, activation="tanh"), ValueError, "activation must be 'relu', 'gelu'"),
    (lambda: layers.TransformerEncoderLayer(8, 2, activation=3), TypeError, "activation must be 'relu', 'gelu'"),
    (lambda: layers.TransformerEncoderLayer(8, 2, dim_feedforward=0), ValueError, "dim_feedforward must be a positive"),
    (lambda: layers.TransformerDecoderLayer(8, 2, layer_norm_eps=0), ValueError, "layer_norm_eps must be a positive"),
    (
        lambda: layers.TransformerEncoder(nn.Linear(2, 2), 2),
        TypeError,
        "encoder_layer must be a TransformerEncoderLayer",
    ),
    (lambda: layers.TransformerDecoder(layers.TransformerDecoderLayer(8, 2), 0), ValueError, "num_layers must be a"),
    (lambda: layers.CausalSelfAttention(5, 12), ValueError, "embed_dimension=12 is not divisible by num_heads=5"),
]


@pytest.mark.parametrize("make,error,message", CONSTRUCTOR_ERRORS, ids=[c[2][:32] for c in CONSTRUCTOR_ERRORS])
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_forward_errors():
    layer = layers.TransformerEncoderLayer(8, 2, batch_first=False)
    x = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(5, 8)], layout=torch.jagged)
    with pytest.raises(ValueError, match=re.escape("src is a nested tensor, which needs batch_first=True")):
        layer(x)
    layer = layers.TransformerEncoderLayer(8, 2, batch_first=True)
    with pytest.raises(ValueError, match="nested inputs take no attention or key padding mask"):
        layer(x, src_key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match=re.escape("only bool and floating types of src_key_padding_mask")):
        layer(torch.randn(2, 5, 8), src_key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("key_padding_mask must have shape (N, L) = (2, 5)")):
        layer(torch.randn(2, 5, 8), src_key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("expected input (N, L, 8) or a nested (N, j, 8), got shape (5, 8)")):
        layers.CausalSelfAttention(2, 8)(torch.randn(5, 8))


def test_packing_round_trip_and_errors():
    x = torch.randn(3, 6, 4, requires_grad=True)
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [1] * 6], dtype=torch.bool)
    packed = layers.pack_padded(x, pad)
    assert packed.offsets.tolist() == [0, 2, 5, 5]
    assert [t.shape[0] for t in packed.nested().unbind()] == [2, 3, 0]
    torch.testing.assert_close(layers.unpack_padded(packed.values, packed.keep), x.masked_fill(pad[..., None], 0))
    layers.unpack_padded(packed.values, packed.keep).sum().backward()
    torch.testing.assert_close(x.grad, (~pad)[..., None].float().expand(3, 6, 4))
    seq_first = layers.pack_padded(x.transpose(0, 1), pad, batch_first=False)
    torch.testing.assert_close(seq_first.values, packed.values)
    with pytest.raises(TypeError, match="key_padding_mask must be a bool tensor"):
        layers.pack_padded(x, pad.float())


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (layers.MultiheadAttention, nn.MultiheadAttention),
        (layers.TransformerEncoderLayer, nn.TransformerEncoderLayer),
        (layers.TransformerEncoder, nn.TransformerEncoder),
        (layers.TransformerDecoderLayer, nn.TransformerDecoderLayer),
        (layers.TransformerDecoder, nn.TransformerDecoder),
    ],
    ids=lambda c: c.__name__,
)
def test_signatures_are_torchs(ours, theirs):
    """Constructor and forward: torch.nn's parameter names, order, kinds and defaults, so every call written for torch
    binds the same way. The only additions allowed come after torch's, keyword-only and defaulting to None (off):
    ``kv_cache`` on the forwards of the layers that decode (docs/decoding.md)."""
    import inspect

    for method in ("__init__", "forward"):
        a = list(inspect.signature(getattr(ours, method)).parameters.values())
        b = list(inspect.signature(getattr(theirs, method)).parameters.values())
        assert [(p.name, p.kind, p.default) for p in a[: len(b)]] == [(p.name, p.kind, p.default) for p in b]
        extra = [(p.name, p.kind, p.default) for p in a[len(b) :]]
        assert all(kind is inspect.Parameter.KEYWORD_ONLY and default is None for _, kind, default in extra), extra
        assert [name for name, _, _ in extra] in ([], ["kv_cache"]), extra
    assert issubclass(ours, theirs)
