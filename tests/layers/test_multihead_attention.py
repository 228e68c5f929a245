"""layers.MultiheadAttention against torch.nn.MultiheadAttention with identical weights."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from layer_checks import assert_close, compare, run, twins

import layers

E, H, N, L, S = 24, 3, 3, 7, 9

# torch (not ours) warns when a bool and a float mask meet; mixing them is part of what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")


def mha_twins(**kwargs):
    return twins(layers.MultiheadAttention, nn.MultiheadAttention, E, H, **kwargs)


def inputs(batch_first=True, kdim=E, vdim=E, batched=True, self_attention=False):
    def shape(length, dim):
        if not batched:
            return (length, dim)
        return (N, length, dim) if batch_first else (length, N, dim)

    q = torch.randn(shape(L, E))
    if self_attention:  # key and value are then the query itself (see call)
        return {"query": q}
    return {"query": q, "key": torch.randn(shape(S, kdim)), "value": torch.randn(shape(S, vdim))}


def call(need_weights=False, **kwargs):
    def f(module, query, key=None, value=None, **masks):
        key = query if key is None else key
        value = key if value is None else value
        return module(query, key, value, need_weights=need_weights, **kwargs, **masks)

    return f


def key_padding(batched=True, dtype=torch.bool, length=S):
    pad = torch.rand(N, length) < 0.4
    pad[:, 0] = False  # every row keeps a key: torch returns NaN for rows with none
    pad = pad if batched else pad[0]
    if dtype == torch.bool:
        return pad
    return torch.zeros(pad.shape).masked_fill(pad, -torch.inf) + torch.randn(pad.shape) * 0.1


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("self_attention", [False, True])
def test_no_mask(batch_first, need_weights, self_attention):
    ours, theirs = mha_twins(batch_first=batch_first)
    x = inputs(batch_first, self_attention=self_attention)
    compare(ours, theirs, x, call(need_weights))


@pytest.mark.parametrize(
    "options",
    [
        {"bias": False},
        {"add_bias_kv": True},
        {"add_zero_attn": True},
        {"add_bias_kv": True, "add_zero_attn": True},
        {"kdim": 10, "vdim": 14},
        {"kdim": 10, "vdim": 14, "bias": False},
    ],
    ids=str,
)
@pytest.mark.parametrize("need_weights", [False, True])
def test_constructor_options(options, need_weights):
    ours, theirs = mha_twins(batch_first=True, **options)
    x = inputs(True, kdim=options.get("kdim", E), vdim=options.get("vdim", E))
    masks = {"key_padding_mask": key_padding(), "attn_mask": torch.rand(L, S) < 0.2}
    compare(ours, theirs, {**x, **masks}, call(need_weights))


@pytest.mark.parametrize("average", [True, False])
def test_weights_shapes_and_values(average):
    ours, theirs = mha_twins(batch_first=True)
    got = compare(ours, theirs, inputs(), call(True, average_attn_weights=average))
    assert got["out1"].shape == ((N, L, S) if average else (N, H, L, S))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "masks",
    [
        "attn bool",
        "attn float",
        "attn 3d bool",
        "attn 3d float",
        "kpm bool",
        "kpm float",
        "both bool",
        "both mixed",
    ],
)
@pytest.mark.parametrize("need_weights", [False, True])
def test_masks(batch_first, masks, need_weights):
    ours, theirs = mha_twins(batch_first=batch_first)
    given = {}
    if masks.startswith("attn") or masks.startswith("both"):
        shape = (N * H, L, S) if "3d" in masks else (L, S)
        attn = torch.rand(shape) < 0.3
        attn[..., 0] = False
        given["attn_mask"] = attn if "float" not in masks else torch.randn(shape)
    if masks.startswith("kpm") or masks.startswith("both"):
        given["key_padding_mask"] = key_padding(
            dtype=torch.float32 if masks in ("kpm float", "both mixed") else torch.bool
        )
    compare(ours, theirs, {**inputs(batch_first), **given}, call(need_weights))


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_is_causal_hint_with_mask(need_weights, with_padding):
    ours, theirs = mha_twins(batch_first=True)
    x = inputs(True, self_attention=True)
    given = {"attn_mask": nn.Transformer.generate_square_subsequent_mask(L)}
    if with_padding:
        given["key_padding_mask"] = key_padding(length=L)
    compare(ours, theirs, {**x, **given}, call(need_weights, is_causal=True))


def test_is_causal_without_mask_equals_explicit_mask():
    """torch needs attn_mask with is_causal; ours applies the top-left causal mask itself."""
    ours, theirs = mha_twins(batch_first=True)
    x = inputs(True)
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    a = run(ours, x, call(False, is_causal=True))
    b = run(theirs, {**x, "attn_mask": causal}, call(False))
    for key in b:
        assert_close(a[key], b[key], key)


@pytest.mark.parametrize("need_weights", [False, True])
def test_unbatched(need_weights):
    ours, theirs = mha_twins(batch_first=True)
    masks = {"key_padding_mask": key_padding(batched=False), "attn_mask": torch.rand(L, S) < 0.2}
    got = compare(ours, theirs, {**inputs(batched=False), **masks}, call(need_weights))
    assert got["out0"].shape == (L, E)


def test_train_mode_without_dropout():
    ours, theirs = mha_twins(batch_first=True, dropout=0.0)
    ours.train(), theirs.train()
    compare(ours, theirs, {**inputs(), "key_padding_mask": key_padding()}, call(False))


@pytest.mark.parametrize("need_weights", [False, True])
def test_dropout_statistics_match_torch(need_weights):
    """With dropout in training, the output's mean over seeds is the eval output and its spread matches torch's."""
    ours, theirs = mha_twins(batch_first=True, dropout=0.4)
    x = inputs()
    samples = {}
    for name, module in (("ours", ours), ("torch", theirs)):
        module.train()
        draws = []
        with torch.no_grad():
            for seed in range(300):
                torch.manual_seed(seed)
                draws.append(module(x["query"], x["key"], x["value"], need_weights=need_weights)[0])
        module.eval()
        with torch.no_grad():
            expected = module(x["query"], x["key"], x["value"], need_weights=False)[0]
        draws = torch.stack(draws)
        samples[name] = draws
        # the mean of 300 draws is within a few standard errors of the dropout-free output
        stderr = draws.std(0) / 300**0.5
        assert ((draws.mean(0) - expected).abs() < 5 * stderr + 1e-6).float().mean() > 0.99
    ratio = samples["ours"].std(0).mean() / samples["torch"].std(0).mean()
    assert 0.9 < ratio < 1.1, f"dropout spread differs from torch's: ratio {ratio:.3f}"


def test_rows_with_nothing_to_attend_give_zero_not_nan():
    ours, _ = mha_twins(batch_first=True)
    x = inputs()
    attn = torch.zeros(L, S, dtype=torch.bool)
    attn[2] = True  # query 2 may attend to nothing
    out, _ = ours(x["query"], x["key"], x["value"], attn_mask=attn, need_weights=False)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 2], ours.out_proj.bias.expand(N, E))  # attention 0, then the out bias


# Nested (jagged) inputs: each sequence gives what the layer gives that sequence alone.


def nested(lengths, dim=E):
    parts = [torch.randn(n, dim, requires_grad=True) for n in lengths]
    return parts, torch.nested.as_nested_tensor(parts, layout=torch.jagged)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_nested_self_attention_per_sequence(is_causal, training):
    mha = layers.MultiheadAttention(E, H, batch_first=True).train(training)
    parts, x = nested([1, 11, 4, 4])
    out, weights = mha(x, x, x, need_weights=False, is_causal=is_causal)
    assert weights is None and out.is_nested and out.offsets() is x.offsets()
    grads = [torch.randn(p.shape) for p in parts]
    sum((o * g).sum() for o, g in zip(out.unbind(), grads, strict=True)).backward()
    nested_grads = [p.grad.clone() for p in parts]
    param_grads = {n: p.grad.clone() for n, p in mha.named_parameters()}
    mha.zero_grad()
    for p in parts:
        p.grad = None
    for o, p, g in zip(out.unbind(), parts, grads, strict=True):
        alone, _ = mha(p[None], p[None], p[None], need_weights=False, is_causal=is_causal)
        assert_close(o, alone[0].detach(), "output")
        (alone[0] * g).sum().backward()
    for p, expected in zip(parts, nested_grads, strict=True):
        assert_close(expected, p.grad, "input gradient")
    for n, p in mha.named_parameters():
        assert_close(param_grads[n], p.grad, f"grad {n}")


def test_nested_cross_attention_lengths_differ():
    mha = layers.MultiheadAttention(E, H, batch_first=True, kdim=10, vdim=12)
    _, q = nested([3, 8])
    _, k = nested([5, 2], dim=10)
    _, v = nested([5, 2], dim=12)
    out, _ = mha(q, k, v, need_weights=False)
    for o, qi, ki, vi in zip(out.unbind(), q.unbind(), k.unbind(), v.unbind(), strict=True):
        alone, _ = mha(qi[None], ki[None], vi[None], need_weights=False)
        assert_close(o, alone[0], "output")


# Bad input: clear errors.

ERRORS = [
    (lambda: layers.MultiheadAttention(10, 3), ValueError, "embed_dim=10 is not divisible by num_heads=3"),
    (lambda: layers.MultiheadAttention(0, 1), ValueError, "embed_dim must be a positive integer, got 0"),
    (
        lambda: layers.MultiheadAttention(8, 2, dropout=1.5),
        ValueError,
        "dropout must be a probability in [0, 1]",
    ),
    (lambda: layers.MultiheadAttention(8, 2, kdim=-1), ValueError, "kdim must be a positive integer, got -1"),
]


@pytest.mark.parametrize("make,error,message", ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_forward_errors():
    mha = layers.MultiheadAttention(E, H, batch_first=True)
    x = inputs()
    q, k, v = x["query"], x["key"], x["value"]
    cases = [
        (
            {"attn_mask": torch.ones(L, L, dtype=torch.bool)},
            ValueError,
            "attn_mask must have shape (L, S) = (7, 9)",
        ),
        (
            {"attn_mask": torch.ones(L, S, dtype=torch.int32)},
            TypeError,
            "only bool and floating types of attn_mask are supported (as in torch.nn), got torch.int32",
        ),
        (
            {"key_padding_mask": torch.ones(N, L, dtype=torch.bool)},
            ValueError,
            "key_padding_mask must have shape (N, S)",
        ),
        (
            {"key_padding_mask": torch.ones(N, S, dtype=torch.long)},
            TypeError,
            "only bool and floating types of key_padding_mask are supported",
        ),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            mha(q, k, v, **kwargs)
    with pytest.raises(ValueError, match=re.escape("query must have embed_dim=24 features")):
        mha(torch.randn(N, L, 8), k, v)
    with pytest.raises(ValueError, match=re.escape("query must be (L, E) unbatched or (N, L, E) batched")):
        mha(q[None], k[None], v[None])
    with pytest.raises(ValueError, match="key must have 24 features"):
        mha(q, torch.randn(N, S, 5), v)


def test_nested_errors():
    _, x = nested([2, 5])
    with pytest.raises(ValueError, match=re.escape("query is a nested tensor, which needs batch_first=True")):
        layers.MultiheadAttention(E, H)(x, x, x, need_weights=False)
    mha = layers.MultiheadAttention(E, H, batch_first=True)
    with pytest.raises(ValueError, match=re.escape("need_weights=True is not supported with nested inputs")):
        mha(x, x, x)
    with pytest.raises(ValueError, match="nested inputs take no key_padding_mask or attn_mask"):
        mha(x, x, x, need_weights=False, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="key is a dense tensor but another input is nested"):
        mha(x, torch.randn(2, 5, E), torch.randn(2, 5, E), need_weights=False)
