"""Encoder/decoder layers and stacks against torch.nn with identical weights; nested and padded batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from layer_checks import assert_close, compare, run, twins

import layers
from layers._layer import padding_route

D, H, FF, N, S, T = 16, 2, 40, 3, 9, 6  # d_model, heads, feed-forward, batch, source and target lengths

pytestmark = pytest.mark.filterwarnings(
    "ignore:enable_nested_tensor is True, but self.use_nested_tensor is False",  # torch's, about its fast path
    "ignore:Support for mismatched",  # torch warns when a bool and a float mask meet
    "ignore:The PyTorch API of nested tensors is in prototype stage",  # torch's fast path, compared against
)


def silu(x):  # a module-level callable activation (get_config can name it)
    return F.silu(x)


def _option_id(options: dict) -> str:
    """A test id that is the same in every process (pytest-xdist compares them): functions by name, not address."""
    return str({k: getattr(v, "__name__", v) for k, v in options.items()})


LAYER_OPTIONS = [
    {},
    {"norm_first": True},
    {"activation": "gelu"},
    {"activation": silu},
    {"bias": False},
    {"batch_first": False},
]


def layer_kwargs(**options):
    return {"dim_feedforward": FF, "dropout": 0.0, "batch_first": True, **options}


def seq(length=S, batch_first=True):
    return torch.randn(N, length, D) if batch_first else torch.randn(length, N, D)


def padding(length=S):
    pad = torch.rand(N, length) < 0.4
    pad[:, 0] = False
    return pad


def encoder_call(module, src, **kwargs):
    return module(src, **kwargs)


@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=_option_id)
@pytest.mark.parametrize("training", [False, True])
def test_encoder_layer_dense(options, training):
    ours, theirs = twins(layers.TransformerEncoderLayer, nn.TransformerEncoderLayer, D, H, **layer_kwargs(**options))
    ours.train(training), theirs.train(training)
    src = seq(batch_first=options.get("batch_first", True))
    mask = torch.randn(S, S)
    compare(ours, theirs, {"src": src, "src_mask": mask}, encoder_call)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "causal hint"])
def test_encoder_layer_masks(mask_kind):
    ours, theirs = twins(layers.TransformerEncoderLayer, nn.TransformerEncoderLayer, D, H, **layer_kwargs())
    mask = nn.Transformer.generate_square_subsequent_mask(S) if mask_kind == "causal hint" else torch.randn(S, S)
    if mask_kind == "bool":
        mask = torch.rand(S, S) < 0.3
        mask.fill_diagonal_(False)
    is_causal = mask_kind == "causal hint"
    compare(ours, theirs, {"src": seq(), "src_mask": mask}, lambda m, **kw: m(**kw, is_causal=is_causal))


def real_tokens(result: dict, keep: torch.Tensor, batch_first=True) -> dict:
    """Outputs compared on real tokens only: padded positions are 0 in ours, arbitrary in torch's."""
    out = result["out0"] if batch_first else result["out0"].transpose(0, 1)
    return {**result, "out0": out[keep]}


@pytest.mark.parametrize("options", [{}, {"norm_first": True}, {"batch_first": False}], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_encoder_layer_padded_batch_is_packed(options, causal):
    """With a key padding mask the layer runs on real tokens: equal to torch there, zeros at padding."""
    ours, theirs = twins(layers.TransformerEncoderLayer, nn.TransformerEncoderLayer, D, H, **layer_kwargs(**options))
    batch_first = options.get("batch_first", True)
    pad = padding()
    pad[1, 3] = True  # padding in the middle
    pad[2, 0], pad[2, 1] = True, True  # left padding
    pad[2, 2] = False
    inputs = {"src": seq(batch_first=batch_first), "src_key_padding_mask": pad}
    if causal:
        inputs["src_mask"] = nn.Transformer.generate_square_subsequent_mask(S)

    def call(m, **kw):
        return m(**kw, is_causal=causal)

    a, b = run(ours, inputs, call), run(theirs, inputs, call)
    keep = ~pad
    out = a["out0"] if batch_first else a["out0"].transpose(0, 1)
    assert (out[pad] == 0).all(), "padded positions must be 0"
    # Outputs only: torch's padded outputs also receive gradient here; the next test compares gradients.
    a, b = real_tokens(a, keep, batch_first), real_tokens(b, keep, batch_first)
    assert_close(a["out0"], b["out0"], "output on real tokens")


def test_padded_batch_gradients_match_torch_on_real_tokens():
    """Gradients equal torch's when the loss only reads real tokens (as a masked loss does)."""
    ours, theirs = twins(layers.TransformerEncoderLayer, nn.TransformerEncoderLayer, D, H, **layer_kwargs())
    pad = padding()
    keep = ~pad

    def call(m, src, src_key_padding_mask):
        return m(src, src_key_padding_mask=src_key_padding_mask)[keep]

    compare(ours, theirs, {"src": seq(), "src_key_padding_mask": pad}, call)


def test_fully_padded_sequence_gives_zeros():
    layer = layers.TransformerEncoderLayer(D, H, **layer_kwargs())
    pad = padding()
    pad[1] = True
    out = layer(seq(), src_key_padding_mask=pad)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_encoder_stack(norm, padded, training):
    def build(layer_cls, encoder_cls):
        torch.manual_seed(7)
        layer = layer_cls(D, H, **layer_kwargs())
        return encoder_cls(layer, 3, norm=nn.LayerNorm(D) if norm else None, enable_nested_tensor=False)

    theirs = build(nn.TransformerEncoderLayer, nn.TransformerEncoder).train(training)
    ours = build(layers.TransformerEncoderLayer, layers.TransformerEncoder).train(training)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    mask = nn.Transformer.generate_square_subsequent_mask(S)
    if not padded:
        compare(ours, theirs, {"src": seq(), "mask": mask}, encoder_call)  # causal detected from the mask
        return
    pad = padding()
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)  # bool: a float mask would get (meaningless) gradients

    def call(m, src, src_key_padding_mask):
        return m(src, mask=causal, src_key_padding_mask=src_key_padding_mask)[~pad]

    compare(ours, theirs, {"src": seq(), "src_key_padding_mask": pad}, call)


def test_encoder_eval_matches_torch_fast_path():
    """In inference torch takes its nested fast path (zeros at padding too, before the final norm)."""
    torch.manual_seed(3)
    theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, batch_first=True), 2).eval()
    ours = layers.convert(nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, batch_first=True), 2)).eval()
    ours.load_state_dict(theirs.state_dict())
    pad = torch.arange(S) >= torch.tensor([[S], [4], [7]])
    x = seq()
    with torch.no_grad():
        expected, got = theirs(x, src_key_padding_mask=pad), ours(x, src_key_padding_mask=pad)
    assert_close(got, expected, "output")


def test_encoder_converts_a_torch_layer():
    encoder = layers.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, batch_first=True), 2)
    assert all(type(layer) is layers.TransformerEncoderLayer for layer in encoder.layers)
    assert all(type(layer.self_attn) is layers.MultiheadAttention for layer in encoder.layers)


@pytest.mark.parametrize("options", [{}, {"norm_first": True}, {"batch_first": False}], ids=str)
@pytest.mark.parametrize("training", [False, True])
def test_decoder_layer(options, training):
    ours, theirs = twins(layers.TransformerDecoderLayer, nn.TransformerDecoderLayer, D, H, **layer_kwargs(**options))
    ours.train(training), theirs.train(training)
    batch_first = options.get("batch_first", True)
    tgt_pad = padding(T)
    inputs = {
        "tgt": seq(T, batch_first),
        "memory": seq(S, batch_first),
        "tgt_mask": nn.Transformer.generate_square_subsequent_mask(T),
        "memory_key_padding_mask": padding(S),
        "tgt_key_padding_mask": tgt_pad,
    }
    keep = ~tgt_pad if batch_first else ~tgt_pad.T

    def call(m, **kw):  # real target tokens only: padded positions are 0 in ours (the layer skips them)
        return m(**kw, tgt_is_causal=True)[keep]

    compare(ours, theirs, inputs, call)
    assert (ours(**inputs, tgt_is_causal=True)[~keep] == 0).all()


def test_decoder_stack_with_memory_mask():
    def build(layer_cls, decoder_cls):
        torch.manual_seed(5)
        return decoder_cls(layer_cls(D, H, **layer_kwargs()), 2, norm=nn.LayerNorm(D))

    theirs, ours = (
        build(nn.TransformerDecoderLayer, nn.TransformerDecoder),
        build(layers.TransformerDecoderLayer, layers.TransformerDecoder),
    )
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    memory_mask = torch.rand(T, S) < 0.3
    memory_mask[:, 0] = False
    inputs = {"tgt": seq(T), "memory": seq(S), "memory_mask": memory_mask, "tgt_mask": torch.randn(T, T)}
    compare(ours, theirs, inputs, lambda m, **kw: m(**kw))


# Nested inputs: each sequence gives what the layer gives that sequence alone, gradients too.


def nested(lengths):
    parts = [torch.randn(n, D, requires_grad=True) for n in lengths]
    return parts, torch.nested.as_nested_tensor(parts, layout=torch.jagged)


def check_per_sequence(module, lengths, call_nested, call_alone):
    parts, x = nested(lengths)
    out = call_nested(module, x)
    assert out.is_nested and out.offsets() is x.offsets()
    grads = [torch.randn(n, D) for n in lengths]
    sum((o * g).sum() for o, g in zip(out.unbind(), grads, strict=True)).backward()
    expected_grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    input_grads = [p.grad.clone() for p in parts]
    module.zero_grad()
    for p in parts:
        p.grad = None
    for o, p, g in zip(out.unbind(), parts, grads, strict=True):
        alone = call_alone(module, p[None])[0]
        assert_close(o, alone.detach(), "output")
        (alone * g).sum().backward()
    for got, p in zip(input_grads, parts, strict=True):
        assert_close(got, p.grad, "input gradient")
    for n, p in module.named_parameters():
        assert_close(expected_grads[n], p.grad, f"grad {n}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_nested_encoder_layer_training(causal, norm_first):
    layer = layers.TransformerEncoderLayer(D, H, **layer_kwargs(norm_first=norm_first)).train()
    check_per_sequence(layer, [1, 12, 5, 5], lambda m, x: m(x, is_causal=causal), lambda m, x: m(x, is_causal=causal))


def test_nested_encoder_stack():
    encoder = layers.TransformerEncoder(
        layers.TransformerEncoderLayer(D, H, **layer_kwargs()), 2, norm=nn.LayerNorm(D), enable_nested_tensor=False
    )
    check_per_sequence(encoder, [3, 8, 1], lambda m, x: m(x), lambda m, x: m(x))


def test_nested_decoder_layer():
    layer = layers.TransformerDecoderLayer(D, H, **layer_kwargs())
    mem_parts = [torch.randn(n, D) for n in (4, 2, 7)]
    memory = torch.nested.nested_tensor(mem_parts, layout=torch.jagged)  # lengths differ from the target's

    def alone(m, x):
        i = alone.index
        alone.index += 1
        return m(x, mem_parts[i][None], tgt_is_causal=True)

    alone.index = 0
    check_per_sequence(layer, [5, 1, 3], lambda m, x: m(x, memory, tgt_is_causal=True), alone)


def test_causal_self_attention_matches_nanogpt_math():
    attn = layers.CausalSelfAttention(H, D, bias=True, is_causal=True)
    x = torch.randn(N, S, D, requires_grad=True)
    y = attn(x)
    q, k, v = attn.c_attn(x).split(D, dim=2)
    q, k, v = (t.view(N, S, H, D // H).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / (D // H) ** 0.5
    scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), -torch.inf)
    expected = attn.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(N, S, D))
    assert_close(y, expected, "output")
    assert list(attn.state_dict()) == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]


def test_causal_self_attention_nested():
    attn = layers.CausalSelfAttention(H, D, bias=True, is_causal=True)
    check_per_sequence(attn, [2, 9, 4], lambda m, x: m(x), lambda m, x: m(x))


def test_compile_fullgraph_no_graph_break():
    """A small model of these layers traces as one graph (dense input), forward and backward."""
    torch.manual_seed(0)
    model = nn.Sequential(
        layers.TransformerEncoder(
            layers.TransformerEncoderLayer(D, H, **layer_kwargs()), 2, enable_nested_tensor=False
        ),
        layers.CausalSelfAttention(H, D, bias=True, is_causal=True),
    )
    x = torch.randn(N, S, D)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert_close(out, expected, "compiled output")


def test_encoder_layer_unbatched_input():
    ours, theirs = twins(layers.TransformerEncoderLayer, nn.TransformerEncoderLayer, D, H, **layer_kwargs())
    compare(ours, theirs, {"src": torch.randn(S, D), "src_mask": torch.randn(S, S)}, encoder_call)


def test_float64_layers_match_torch_float64():
    kwargs = layer_kwargs(dtype=torch.float64)
    ours, theirs = twins(layers.TransformerDecoderLayer, nn.TransformerDecoderLayer, D, H, **kwargs)
    inputs = {"tgt": seq(T).double(), "memory": seq(S).double(), "memory_key_padding_mask": padding(S)}
    got = run(ours, inputs, lambda m, **kw: m(**kw, tgt_is_causal=True))
    expected = run(theirs, {**inputs, "tgt_mask": torch.ones(T, T, dtype=torch.bool).triu(1)}, lambda m, **kw: m(**kw))
    expected.pop("grad tgt_mask", None)
    for key in expected:
        assert got[key].dtype == torch.float64
        torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-10, msg=key)


def test_device_argument():
    layer = layers.TransformerEncoderLayer(D, H, device="meta")
    assert all(p.device.type == "meta" for p in layer.parameters())
    assert type(layer.self_attn) is layers.MultiheadAttention


def test_encoder_layer_dropout_statistics_match_torch():
    """In training with dropout, the mean over seeds is the dropout-free output and the spread is torch's."""
    ours, theirs = twins(layers.TransformerEncoderLayer, nn.TransformerEncoderLayer, D, H, dim_feedforward=FF,
                         dropout=0.3, batch_first=True)  # fmt: skip
    x = seq()
    spreads = {}
    for name, module in (("ours", ours), ("torch", theirs)):
        module.train()
        with torch.no_grad():
            draws = []
            for seed in range(300):
                torch.manual_seed(seed)
                draws.append(module(x))
            draws = torch.stack(draws)
        spreads[name] = draws.std(0).mean()
    ratio = spreads["ours"] / spreads["torch"]
    assert 0.9 < ratio < 1.1, f"dropout spread differs from torch's: ratio {ratio:.3f}"


def test_skip_padding_false_computes_over_the_padded_batch(monkeypatch):
    """``layers.skip_padding(False)``: the encoder stack, the decoder stack and ``Transformer`` compute over the whole
    padded batch (nothing packed), with the packed route's numbers on real tokens and 0 at padding, gradients too;
    the switch is restored on leaving the block, also when it raises."""
    src_pad, tgt_pad = padding(), padding(T)
    inputs = {"src": seq(), "tgt": seq(T)}
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    model = layers.Transformer(D, H, 2, 2, FF, dropout=0.0, batch_first=True)

    def step(**kw):
        model.zero_grad()
        out = model(**inputs, **kw, tgt_mask=causal, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                    memory_key_padding_mask=src_pad)  # fmt: skip
        out[~tgt_pad].square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    packed, packed_grads = step()

    def refuse(*args, **kwargs):
        raise AssertionError("packed inside skip_padding(False)")

    for module in (layers.encoder, layers.decoder, layers.transformer):
        monkeypatch.setattr(module, "pack_keep", refuse)
    with pytest.raises(ZeroDivisionError), layers.skip_padding(False):
        raise ZeroDivisionError
    with pytest.raises(AssertionError, match="packed inside"):  # the switch is back on after the block
        step()
    with layers.skip_padding(False):
        dense, dense_grads = step()
        assert not layers.packing.skipping_padding(torch.device("cpu"))
    assert_close(dense, packed, "output over the padded batch")
    assert (dense[tgt_pad] == 0).all()
    for a, b in zip(dense_grads, packed_grads, strict=True):
        assert_close(a, b, "gradient")


def test_padding_is_skipped_on_the_cpu_by_default_elsewhere_on_request():
    """The default rule: pack on the CPU only (on an H200 packing made a small padded encoder slower than torch's);
    ``skip_padding(True)`` packs on any device, ``skip_padding(False)`` on none. A padded batch on another device
    (``meta`` here: shapes without data) is not even inspected by default."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert layers.packing.skipping_padding(cpu) and not layers.packing.skipping_padding(cuda)
    with layers.skip_padding(True):
        assert layers.packing.skipping_padding(cpu) and layers.packing.skipping_padding(cuda)
        with layers.skip_padding(False):
            assert not layers.packing.skipping_padding(cpu) and not layers.packing.skipping_padding(cuda)
        assert layers.packing.skipping_padding(cuda)
    assert not layers.packing.skipping_padding(cuda)
    assert padding_route(seq().to("meta"), padding().to("meta"), None, None, True) is None
    assert padding_route(seq(), padding(), None, None, True) is not None


def test_skip_padding_takes_a_bool():
    with pytest.raises(layers.ArgumentTypeError, match="skip_padding takes True or False, got 'no'"):
        layers.skip_padding("no").__enter__()
