"""What real code does around `forward`: nn.Transformer's twin, the SDPA tutorial's CausalSelfAttention, nested
tensors of both layouts, hooks, saving whole models, TorchScript, torch.export / ONNX, torch.compile, and
exceptions caught as torch's types. Numbers against torch's classes with identical weights."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from layer_checks import assert_close, compare, twins

import layers

D, H, FF, N, S, T = 16, 2, 32, 3, 9, 6

pytestmark = pytest.mark.filterwarnings(
    "ignore:enable_nested_tensor is True",
    "ignore:The PyTorch API of nested tensors is in prototype stage",
    "ignore:Support for mismatched",
)


def padding(length: int, lengths=(None, 4, 2)) -> torch.Tensor:
    """(N, length) bool, True = padding; the first sequence full, the others shorter."""
    full = torch.tensor([length if n is None else n for n in lengths])
    return torch.arange(length)[None, :] >= full[:, None]


def transformer_kwargs(**extra):
    return {"d_model": D, "nhead": H, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": FF,
            "dropout": 0.0, "batch_first": True, **extra}  # fmt: skip


# nn.Transformer's twin


@pytest.mark.parametrize("options", [{}, {"norm_first": True}, {"batch_first": False}, {"activation": "gelu"}])
def test_transformer_matches_torch(options):
    ours, theirs = twins(layers.Transformer, nn.Transformer, **transformer_kwargs(**options))
    batch_first = options.get("batch_first", True)
    src, tgt = torch.randn(N, S, D), torch.randn(N, T, D)
    if not batch_first:
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
    tgt_mask = layers.Transformer.generate_square_subsequent_mask(T)
    assert torch.equal(tgt_mask, nn.Transformer.generate_square_subsequent_mask(T))
    compare(ours, theirs, {"src": src, "tgt": tgt}, lambda m, **kw: m(**kw, tgt_mask=tgt_mask))


def test_transformer_padded_end_to_end_matches_torch_on_real_tokens():
    """Padded source and target: the memory stays packed from the encoder to the decoder; real target tokens and
    every gradient equal torch's (a loss over real tokens), padded target positions are 0."""
    ours, theirs = twins(layers.Transformer, nn.Transformer, **transformer_kwargs())
    src_pad, tgt_pad = padding(S), padding(T, (None, 5, 3))
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(T)

    def call(m, src, tgt):
        out = m(src, tgt, tgt_mask=tgt_mask, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                memory_key_padding_mask=src_pad)  # fmt: skip
        return out[~tgt_pad]

    compare(ours, theirs, {"src": torch.randn(N, S, D), "tgt": torch.randn(N, T, D)}, call)
    with torch.profiler.profile() as prof:
        out = ours(torch.randn(N, S, D), torch.randn(N, T, D), tgt_mask=tgt_mask, src_key_padding_mask=src_pad,
                   tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)  # fmt: skip
    assert (out[tgt_pad] == 0).all()
    names = {e.key for e in prof.key_averages()}
    assert "fusedlayers::varlen_attention[TORCH]" in names and "fusedlayers::attention[TORCH]" not in names


def test_convert_handles_transformer_and_its_subclasses():
    class WordLanguageModel(nn.Transformer):  # pytorch/examples' word_language_model subclasses nn.Transformer
        def __init__(self):
            super().__init__(d_model=D, nhead=H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=FF)

    plain, sub = nn.Transformer(D, H, 1, 1, FF), WordLanguageModel()
    layers.convert(plain), layers.convert(sub)
    assert type(plain) is layers.Transformer and type(sub) is WordLanguageModel
    assert isinstance(sub.encoder, layers.TransformerEncoder) and isinstance(sub.decoder, layers.TransformerDecoder)
    assert isinstance(sub.decoder.layers[0].multihead_attn, layers.MultiheadAttention)
    layers.revert(plain)
    assert type(plain) is nn.Transformer and type(plain.encoder.layers[0].self_attn) is nn.MultiheadAttention


# The SDPA tutorial's CausalSelfAttention


class TutorialCausalSelfAttention(nn.Module):
    """The tutorial's module as its text describes it: fused projection, causal (and dropout) only in training."""

    def __init__(self, num_heads, embed_dimension, bias=False, is_causal=False, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(embed_dimension, 3 * embed_dimension, bias=bias)
        self.c_proj = nn.Linear(embed_dimension, embed_dimension, bias=bias)
        self.dropout, self.resid_dropout = dropout, nn.Dropout(dropout)
        self.num_heads, self.is_causal = num_heads, is_causal

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in self.c_attn(x).chunk(3, -1))
        causal, dropout = (self.is_causal, self.dropout) if self.training else (False, 0.0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(-2)))


def test_causal_self_attention_takes_the_tutorials_constructor():
    by_keyword = layers.CausalSelfAttention(num_heads=8, embed_dimension=64, bias=False, is_causal=True, dropout=0.1)
    by_position = layers.CausalSelfAttention(8, 64, False, True, 0.1)
    nanogpt = layers.CausalSelfAttention(n_head=8, n_embd=64, is_causal=True, dropout=0.1)
    for m in (by_keyword, by_position, nanogpt):
        assert (m.num_heads, m.embed_dimension, m.is_causal, m.dropout) == (8, 64, True, 0.1)
        assert m.c_attn.bias is None
    assert list(by_keyword.state_dict()) == list(TutorialCausalSelfAttention(8, 64).state_dict())
    with pytest.raises(ValueError, match="the arguments look swapped; the order is \\(num_heads, embed_dimension\\)"):
        layers.CausalSelfAttention(64, 8)


def test_causal_self_attention_equals_the_tutorials_module_in_training_and_stays_causal_in_eval():
    torch.manual_seed(0)
    tutorial = TutorialCausalSelfAttention(num_heads=4, embed_dimension=32, is_causal=True)
    ours = layers.CausalSelfAttention(num_heads=4, embed_dimension=32, is_causal=True)
    ours.load_state_dict(tutorial.state_dict(), strict=True)
    compare(ours.train(), tutorial.train(), {"x": torch.randn(3, 10, 32)}, lambda m, x: m(x))
    x = torch.randn(3, 10, 32)
    ours.eval(), tutorial.eval()
    with torch.no_grad():
        tutorial_eval, ours_eval = tutorial(x), ours(x)
        tutorial.train()  # the tutorial's causal numbers (dropout is 0)
        causal = tutorial(x)
    assert_close(ours_eval, causal, "eval output: still causal")
    assert not torch.allclose(tutorial_eval, causal), "the tutorial's eval sees the future"
    y = x.clone()
    y[:, 5:] = torch.randn(3, 5, 32)  # changing the future leaves the past unchanged
    with torch.no_grad():
        assert_close(ours(y)[:, :5], ours_eval[:, :5], "eval output before the change")


# Nested tensors of both layouts


def strided(parts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.as_nested_tensor(parts, layout=torch.strided)


NESTED_MODULES = {
    "MultiheadAttention": (
        lambda: layers.MultiheadAttention(D, H, batch_first=True), lambda m, x: m(x, x, x, need_weights=False)[0]
    ),
    "TransformerEncoderLayer": (
        lambda: layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), lambda m, x: m(x)
    ),
    "TransformerEncoder": (
        lambda: layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2),
        lambda m, x: m(x, is_causal=True),
    ),
    "TransformerDecoderLayer": (
        lambda: layers.TransformerDecoderLayer(D, H, FF, 0.0, batch_first=True),
        lambda m, x: m(x, x, tgt_is_causal=True),
    ),
    "CausalSelfAttention": (lambda: layers.CausalSelfAttention(H, D, is_causal=True), lambda m, x: m(x)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NESTED_MODULES))
def test_strided_nested_input_gives_strided_output_with_gradients(name):
    make, call = NESTED_MODULES[name]
    module = make()
    parts = [torch.randn(n, D, requires_grad=True) for n in (4, 1, 7)]
    jagged = torch.nested.as_nested_tensor(parts, layout=torch.jagged)
    out = call(module, strided(parts))
    assert out.is_nested and out.layout == torch.strided
    expected = call(module, jagged)
    for a, b in zip(out.unbind(), expected.unbind(), strict=True):
        assert_close(a, b, "strided vs jagged")
    grad = torch.autograd.grad(sum(t.sum() for t in out.unbind()), parts)
    grad_jagged = torch.autograd.grad(expected.values().sum(), parts)
    for a, b in zip(grad, grad_jagged, strict=True):
        assert_close(a, b, "input gradient")


def test_nested_errors_are_clear_value_errors():
    mha = layers.MultiheadAttention(D, H)  # batch_first=False
    x = strided([torch.randn(3, D), torch.randn(5, D)])
    with pytest.raises(ValueError, match="query is a nested tensor, which needs batch_first=True"):
        mha(x, x, x, need_weights=False)
    mha = layers.MultiheadAttention(D, H, batch_first=True)
    with pytest.raises(ValueError, match="key is a dense tensor but another input is nested"):
        mha(x, torch.randn(2, 5, D), torch.randn(2, 5, D), need_weights=False)
    with pytest.raises(ValueError, match="nested query must have 16 features"):
        y = strided([torch.randn(3, 8), torch.randn(5, 8)])
        mha(y, y, y, need_weights=False)
    decoder = layers.TransformerDecoderLayer(D, H, FF, batch_first=True)
    with pytest.raises(ValueError, match="memory is dense but the other input is nested"):
        decoder(x, torch.randn(2, 4, D))


# Hooks


def test_self_attention_hooks_fire_on_every_path():
    encoder = layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2)
    seen = []
    attn = encoder.layers[1].self_attn
    attn.register_forward_pre_hook(lambda m, args, kwargs: seen.append(("pre", kwargs.get("need_weights"))),
                                   with_kwargs=True)  # fmt: skip
    attn.register_forward_hook(lambda m, args, out: seen.append(("post", tuple(type(a).__name__ for a in args))))
    layer_calls = []
    encoder.layers[0].register_forward_hook(lambda m, args, out: layer_calls.append(out.shape))
    x, pad = torch.randn(N, S, D), padding(S)
    paths = {
        "dense": lambda: encoder(x),
        "padded": lambda: encoder(x, src_key_padding_mask=pad),
        "nested": lambda: encoder(torch.nested.nested_tensor([torch.randn(n, D) for n in (3, 6)], layout=torch.jagged)),
    }
    for name, run_path in paths.items():
        seen.clear()
        layer_calls.clear()
        out = run_path()
        assert [s[0] for s in seen] == ["pre", "post"], name  # once per call
        assert seen[0][1] is False, name  # called with need_weights=False, as torch's layers call it
        assert len(layer_calls) == 1, name
    dense_args = encoder(x) is not None and seen[1][1]
    assert dense_args == ("NestedTensor", "NestedTensor", "NestedTensor")  # the last path: packed tokens, nested
    assert out.is_nested


def test_hooks_see_the_same_numbers_as_without():
    encoder = layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2).eval()
    x, pad = torch.randn(N, S, D), padding(S)
    before = encoder(x, src_key_padding_mask=pad)
    captured = []
    encoder.layers[0].self_attn.register_forward_hook(lambda m, args, out: captured.append(out[0]))
    after = encoder(x, src_key_padding_mask=pad)
    assert torch.equal(before, after) and captured[0].is_nested


# Saving whole models


SAVED = {
    "MultiheadAttention": lambda: layers.MultiheadAttention(D, H, batch_first=True),
    "TransformerEncoder": lambda: layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF), 2),
    "TransformerDecoder": lambda: layers.TransformerDecoder(layers.TransformerDecoderLayer(D, H, FF), 2),
    "Transformer": lambda: layers.Transformer(**transformer_kwargs()),
    "CausalSelfAttention": lambda: layers.CausalSelfAttention(H, D, is_causal=True),
    "converted Sequential": lambda: layers.convert(
        nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF), 1, enable_nested_tensor=False))
    ),
}


@pytest.mark.parametrize("name", list(SAVED))
def test_whole_model_save_and_weights_only_load(name):
    model = SAVED[name]().eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match="Unsupported global"):  # torch's default refuses unknown classes
        torch.load(io.BytesIO(buffer.getvalue()))
    with layers.safe_globals(nn.Sequential):
        loaded = torch.load(buffer)  # weights_only=True: torch's default
    assert type(loaded) is type(model)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        if name in ("Transformer", "TransformerDecoder"):
            assert torch.equal(loaded(x, x), model(x, x))
        elif name == "MultiheadAttention":
            assert torch.equal(loaded(x, x, x)[0], model(x, x, x)[0])
        else:
            assert torch.equal(loaded(x), model(x))


# TorchScript, torch.export, ONNX, torch.compile


def scripted_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.TransformerEncoder(
            nn.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2, enable_nested_tensor=False
        )
    )
    return layers.convert(model).eval()


def test_torchscript_of_a_converted_model():
    model = scripted_model()
    x = torch.randn(N, S, D)
    eager = model(x)
    scripted = torch.jit.script(model)
    assert_close(scripted(x), eager, "scripted output")
    assert type(model[0]) is not layers.TransformerEncoder  # TorchScript holds torch's class while it compiles ...
    model(x)
    assert type(model[0]) is layers.TransformerEncoder  # ... and the first eager call switches it back
    assert type(model[0].layers[0].self_attn) is layers.MultiheadAttention
    for module in (layers.MultiheadAttention(D, H, batch_first=True), layers.CausalSelfAttention(H, D, is_causal=True)):
        module.eval()
        args = (x, x, x) if isinstance(module, nn.MultiheadAttention) else (x,)
        out = torch.jit.script(module)(*args)
        eager_out = module(*args)
        first, eager_first = (o[0] if isinstance(o, tuple) else o for o in (out, eager_out))
        assert_close(first, eager_first, type(module).__name__)


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_with_a_key_padding_mask(strict):
    model = layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2).eval()
    x, pad = torch.randn(N, S, D), padding(S)
    eager = model(x, src_key_padding_mask=pad)
    exported = torch.export.export(model, (x,), {"src_key_padding_mask": pad}, strict=strict)
    assert torch.equal(exported.module()(x, src_key_padding_mask=pad), eager) or torch.allclose(
        exported.module()(x, src_key_padding_mask=pad), eager, rtol=1e-5, atol=1e-6
    )


def test_onnx_export_with_a_key_padding_mask(tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript (the dev extra)")
    onnxruntime = pytest.importorskip("onnxruntime", reason="running the exported model needs onnxruntime")
    model = layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2).eval()
    x, pad = torch.randn(N, S, D), padding(S)
    eager = model(x, src_key_padding_mask=pad)
    path = tmp_path / "encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), kwargs={"src_key_padding_mask": pad}, dynamo=True)
    session = onnxruntime.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    (out,) = session.run(None, dict(zip(names, (x.numpy(), pad.numpy()), strict=True)))
    torch.testing.assert_close(torch.from_numpy(out), eager, rtol=1e-4, atol=1e-5)


def test_compile_fullgraph_with_padding_masks_and_nested_inputs():
    model = layers.TransformerEncoder(layers.TransformerEncoderLayer(D, H, FF, 0.0, batch_first=True), 2)
    x, pad = torch.randn(N, S, D, requires_grad=True), padding(S)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager = model(x, src_key_padding_mask=pad)
    out = compiled(x, src_key_padding_mask=pad)
    assert_close(out, eager, "compiled padded")
    grad, grad_eager = torch.autograd.grad(out[~pad].sum(), x)[0], torch.autograd.grad(eager[~pad].sum(), x)[0]
    assert_close(grad, grad_eager, "compiled padded gradient")
    nested = torch.nested.nested_tensor([torch.randn(n, D) for n in (3, 8)], layout=torch.jagged)
    assert_close(compiled(nested).values(), model(nested).values(), "compiled nested")


# Exceptions: caught as torch's type and as ours


def raised(make) -> BaseException:
    try:
        make()
    except Exception as err:
        return err
    raise AssertionError("no exception")


BAD = {
    "d_model % nhead": lambda cls: cls.TransformerEncoderLayer(10, 3),
    "embed_dim % num_heads": lambda cls: cls.MultiheadAttention(10, 3),
    "activation name": lambda cls: cls.TransformerEncoderLayer(D, H, activation="swish"),
    "uint8 key padding mask": lambda cls: cls.MultiheadAttention(D, H, batch_first=True)(
        *(torch.randn(N, S, D),) * 3, key_padding_mask=torch.zeros(N, S, dtype=torch.uint8)
    ),
    "3-D key padding mask": lambda cls: cls.MultiheadAttention(D, H, batch_first=True)(
        *(torch.randn(N, S, D),) * 3, key_padding_mask=torch.zeros(N, S, 1, dtype=torch.bool)
    ),
    "attn_mask shape": lambda cls: cls.MultiheadAttention(D, H, batch_first=True)(
        *(torch.randn(N, S, D),) * 3, attn_mask=torch.zeros(S, S + 1, dtype=torch.bool)
    ),
    "4-D query": lambda cls: cls.MultiheadAttention(D, H)(*(torch.randn(1, N, S, D),) * 3),
    "Transformer batch mismatch": lambda cls: cls.Transformer(**transformer_kwargs())(
        torch.randn(N, S, D), torch.randn(N + 1, T, D)
    ),
    "Transformer d_model": lambda cls: cls.Transformer(**transformer_kwargs())(
        torch.randn(N, S, 8), torch.randn(N, T, 8)
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_errors_are_torchs_type_and_ours(case):
    theirs, ours = raised(lambda: BAD[case](nn)), raised(lambda: BAD[case](layers))
    assert isinstance(ours, type(theirs)), f"torch raises {type(theirs).__name__}, we raise {type(ours).__mro__}"
    assert isinstance(ours, (ValueError, TypeError)), "and what this package documents"


@pytest.mark.parametrize("batch_first", [True, False])
def test_bias_of_another_dtype_behaves_as_torch(batch_first):
    ours, theirs = twins(layers.MultiheadAttention, nn.MultiheadAttention, D, H, batch_first=batch_first)
    for m in (ours, theirs):
        m.in_proj_bias.data = m.in_proj_bias.data.double()
    x = torch.randn(N, S, D)
    try:
        expected = theirs(x, x, x)[0]
    except RuntimeError as err:
        with pytest.raises(RuntimeError, match="same dtype"):
            ours(x, x, x)
        assert "same dtype" in str(err)
        return
    assert_close(ours(x, x, x)[0], expected, "output with a float64 bias")


def test_dropout_draws_equal_torchs_on_a_dense_batch():
    torch.manual_seed(3)
    theirs = nn.TransformerEncoderLayer(D, H, FF, dropout=0.3, batch_first=True)
    ours = layers.convert(copy.deepcopy(theirs))
    x = torch.randn(N, S, D)
    torch.manual_seed(9)
    expected = theirs(x)
    torch.manual_seed(9)
    assert torch.equal(ours(x), expected)


@pytest.mark.parametrize("with_padding", [False, True])
def test_returned_weights_draw_torchs_dropout(with_padding):
    """``need_weights=True`` in training (DETR's call): the same seed gives torch's weights, output and gradients
    bitwise (the weights' dropout drawn as torch draws it, in one pass on CPU)."""
    torch.manual_seed(3)
    theirs = nn.MultiheadAttention(D, H, dropout=0.3, batch_first=True)
    ours = layers.convert(copy.deepcopy(theirs))
    x = torch.randn(N, S, D, requires_grad=True)
    pad = padding(S) if with_padding else None
    results = []
    for module in (theirs, ours):
        torch.manual_seed(9)
        out, weights = module(x, x, x, key_padding_mask=pad)
        grads = torch.autograd.grad((out.square().sum(), weights.sum()), [x, *module.parameters()])
        results.append((out, weights, *grads))
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert torch.equal(a, b), ["out", "weights", "grad x", "grad in_proj_weight"][min(i, 3)]


def _graph_nodes(t: torch.Tensor) -> set[str]:
    seen, names, todo = set(), set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [n for n, _ in node.next_functions]
    return names


@pytest.mark.parametrize(
    "ours_cls,cls",
    [
        (layers.TransformerEncoderLayer, nn.TransformerEncoderLayer),
        (layers.TransformerDecoderLayer, nn.TransformerDecoderLayer),
    ],
)
def test_training_graph_has_no_copies_torchs_has_not(ours_cls, cls):
    """No in-place op on a view in training (autograd would clone and copy the tensor back in backward): the nodes
    of our training graph are a subset of torch's, on the same call."""
    ours, theirs = twins(ours_cls, cls, D, H, FF, dropout=0.1, batch_first=True)
    x = torch.randn(N, S, D, requires_grad=True)
    args = (x,) if cls is nn.TransformerEncoderLayer else (x, torch.randn(N, T, D))
    extra = _graph_nodes(ours(*args)) - _graph_nodes(theirs(*args))
    assert not {"CopySlices", "AsStridedBackward0", "CloneBackward0"} & extra, extra
