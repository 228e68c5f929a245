"""Incremental decoding with `layers.KVCache`: token by token equals recomputing the whole sequence, for
CausalSelfAttention, the decoder layers and the GPT example; prompts of different lengths decode together as each
alone; one compiled decoding step serves every position."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from layer_checks import assert_close

import layers

E, H = 32, 4


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return layers.CausalSelfAttention(num_heads=H, embed_dimension=E, is_causal=True).eval()


def test_token_by_token_equals_the_full_sequence(attn):
    x = torch.randn(3, 12, E)
    cache = layers.KVCache(3, 16, H, E // H)
    prompt = attn(x[:, :5], kv_cache=cache)
    steps = [attn(x[:, t : t + 1], kv_cache=cache) for t in range(5, 12)]
    assert_close(torch.cat([prompt, *steps], dim=1), attn(x), "cached output")
    assert cache.lengths.tolist() == [12, 12, 12]


def test_prompts_of_different_lengths_decode_together_as_each_alone(attn):
    prompts = [torch.randn(n, E) for n in (2, 9, 5)]
    cache = layers.KVCache(3, 16, H, E // H)
    first = attn(torch.nested.as_nested_tensor(prompts, layout=torch.jagged), kv_cache=cache)
    new = torch.randn(3, 2, E)
    second = attn(new[:, :1], kv_cache=cache)  # one token each, at each sequence's own position
    ragged = torch.nested.as_nested_tensor([new[0, 1:], new[1, 1:], torch.randn(0, E)], layout=torch.jagged)
    third = attn(ragged, kv_cache=cache)  # a ragged continuation: the third sequence adds nothing
    assert cache.lengths.tolist() == [4, 11, 6]
    for b, prompt in enumerate(prompts):
        added = new[b, : (2 if b < 2 else 1)]
        alone = attn(torch.cat([prompt, added])[None])[0]
        n = len(prompt)
        assert_close(first.unbind()[b], alone[:n], f"prompt {b}")
        assert_close(second[b, 0], alone[n], f"step {b}")
        if b < 2:
            assert_close(third.unbind()[b][0], alone[n + 1], f"continuation {b}")


@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_incremental_decoding_equals_the_full_target(batch_first):
    torch.manual_seed(1)
    layer = layers.TransformerDecoderLayer(E, H, 64, dropout=0.0, batch_first=batch_first)
    decoder = layers.TransformerDecoder(layer, 2, norm=nn.LayerNorm(E)).eval()
    tgt, memory = torch.randn(2, 7, E), torch.randn(2, 5, E)
    memory_pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    if not batch_first:
        tgt, memory = tgt.transpose(0, 1), memory.transpose(0, 1)
    full = decoder(tgt, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(7),
                   memory_key_padding_mask=memory_pad)  # fmt: skip
    caches = layers.KVCache.for_decoder(decoder, batch_size=2, max_len=8)
    seq = 1 if batch_first else 0
    pieces = [decoder(tgt.narrow(seq, 0, 3), memory, memory_key_padding_mask=memory_pad, kv_cache=caches)]
    for t in range(3, 7):
        pieces.append(decoder(tgt.narrow(seq, t, 1), memory, memory_key_padding_mask=memory_pad, kv_cache=caches))
    assert_close(torch.cat(pieces, dim=seq), full, "incremental decoder output")
    assert all(c.memory is not None for c in caches)  # the memory's keys/values: projected once, kept


def test_gpt_example_cached_logits_and_greedy_generation():
    from lightning_examples.models import GPTBackbone

    torch.manual_seed(2)
    model = GPTBackbone(vocab_size=256, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0).eval()
    idx = torch.randint(0, 256, (2, 10))
    caches = model.new_caches(2)
    pieces = [model(idx[:, :4], caches)] + [model(idx[:, t : t + 1], caches) for t in range(4, 10)]
    assert_close(torch.cat(pieces, dim=1), model(idx), "cached logits")
    # greedy: the same tokens with and without the cache, past the context's restart (24 tokens)
    with_cache = model.generate(idx[:, :3], 40, temperature=0.0, use_cache=True)
    without = model.generate(idx[:, :3], 40, temperature=0.0, use_cache=False)
    assert torch.equal(with_cache, without)
    # generation returns an ordinary tensor (not an inference-mode one): a training step can use the samples
    assert not with_cache.is_inference()
    model.train()(with_cache[:, -24:]).sum().backward()
    assert model.wte.weight.grad is not None


def test_one_compiled_step_serves_every_position(attn):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cache, eager_cache = layers.KVCache(2, 32, H, E // H), layers.KVCache(2, 32, H, E // H)
    prompt = torch.randn(2, 4, E)
    attn(prompt, kv_cache=cache)
    attn(prompt, kv_cache=eager_cache)

    @torch.no_grad()  # decoding is inference
    def step(x):
        return attn(x, kv_cache=cache)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 10, E)
    for t in range(6):
        out = compiled(x[:, t : t + 1])
        assert_close(out, attn(x[:, t : t + 1], kv_cache=eager_cache), f"step {t}")
    assert counters["stats"]["unique_graphs"] == 1


def test_generate_with_a_compiled_model_compiles_two_graphs():
    """generate() hands the model its steps as fresh (B, 1) tensors: a compiled model compiles the prompt and one
    step, not one graph per position (a slice of the growing ids has a new stride every step)."""
    from torch._dynamo.utils import counters

    from layers.bench.decode import TinyLM
    from layers.kv_cache import generate

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = TinyLM(32, 24, 1, 2, 16).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="eager")
    prompt = torch.randint(0, 32, (2, 3))
    out = generate(compiled, model.new_caches, prompt, 8, 24, 0.0, None, True)
    assert torch.equal(out, generate(model, model.new_caches, prompt, 8, 24, 0.0, None, False))
    assert counters["stats"]["unique_graphs"] == 2


def test_a_full_cache_is_refused_off_the_cpu_without_reading_the_lengths(monkeypatch):
    """On a GPU a decoding step must not read the lengths (a sync): the cache keeps the longest length on the host
    and refuses an append past max_len before writing, with the same message; a packed prompt reads them once.
    (No GPU here: the off-CPU path runs on a CPU cache told it is elsewhere.)"""
    cache = layers.KVCache(2, 6, H, E // H)
    cache._on_cpu = False
    packed = torch.randn(6, H, E // H)
    cache.append_packed(packed, packed, torch.tensor([0, 2, 6]))  # a ragged prompt: 2 and 4 tokens
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or real_tolist(t))
    step = torch.randn(2, 2, H, E // H)
    before = cache.append(step, step)  # 4 and 6: fits, nothing read on the host
    assert reads == [] and real_tolist(cache.lengths) == [4, 6] and real_tolist(before) == [2, 4]
    one = torch.randn(2, 1, H, E // H)
    with pytest.raises(ValueError, match=r"the cache is full: max_len=6, in use \[4, 6\], and this append would make "
                                         r"a sequence 7 tokens long"):  # fmt: skip
        cache.append(one, one)
    assert real_tolist(cache.lengths) == [4, 6]  # refused before writing
    cache.reset()
    full = torch.randn(2, 6, H, E // H)
    cache.append(full, full)  # the host's count starts again
    assert real_tolist(cache.lengths) == [6, 6]


def test_off_the_cpu_a_decoding_step_writes_one_slice_where_the_host_count_is_exact(attn, monkeypatch):
    """Off the CPU (simulated: a CPU cache told it is elsewhere) equal-length steps write one slice at the position
    the host counted, without index arithmetic; after a step the host did not count (inside torch.compile) the
    cache scatters by the lengths on the device until a reset; either way token by token equals the full sequence."""
    x = torch.randn(2, 9, E)
    full = attn(x)
    scatters = []
    real = layers.KVCache._scatter
    monkeypatch.setattr(layers.KVCache, "_scatter", lambda self, *a: scatters.append(1) or real(self, *a))
    cache = layers.KVCache(2, 12, H, E // H)
    cache._on_cpu = False
    outs = [attn(x[:, :4], kv_cache=cache)] + [attn(x[:, t : t + 1], kv_cache=cache) for t in (4, 5)]
    assert scatters == []  # prompt and steps: slices
    compiled = torch.compile(attn, fullgraph=True, backend="eager")
    outs.append(compiled(x[:, 6:7], kv_cache=cache))  # appended inside a graph: not counted on the host
    assert not cache._counted
    outs += [attn(x[:, t : t + 1], kv_cache=cache) for t in (7, 8)]  # the host count is unknown: scatter
    assert len(scatters) == 3 and cache.lengths.tolist() == [9, 9]
    assert_close(torch.cat(outs, dim=1), full, "cached output")
    cache.reset()
    assert cache._counted and cache._longest == 0


def test_cache_errors(attn):
    cache = layers.KVCache(2, 4, H, E // H)
    attn(torch.randn(2, 3, E), kv_cache=cache)
    with pytest.raises(ValueError, match=r"the cache is full: max_len=4, in use \[3, 3\]"):
        attn(torch.randn(2, 2, E), kv_cache=cache)
    with pytest.raises(ValueError, match="the attention has 4 key/value heads of dim 8 but the cache holds"):
        attn(torch.randn(2, 1, E), kv_cache=layers.KVCache(2, 4, 2, 16))
    with pytest.raises(ValueError, match="kv_cache needs is_causal=True"):
        layers.CausalSelfAttention(H, E)(torch.randn(2, 1, E), kv_cache=layers.KVCache(2, 4, H, E // H))
    with pytest.raises(ValueError, match="KVCache: max_len must be a positive int"):
        layers.KVCache(2, 0, H, 8)
    # cached_attention's own check of the queries (the decoding step does not validate them again)
    k = v = torch.randn(2, 1, H, E // H)
    for q, message in (
        (torch.randn(2, 1, 3, E // H), r"queries \(2, 1, 3, 8\) do not fit the new keys \(2, 1, 4, 8\)"),
        (torch.randn(2, 2, H, E // H), r"queries \(2, 2, 4, 8\) do not fit"),
        (torch.randn(2, 1, H, E // H, dtype=torch.float64), "queries are torch.float64 on cpu but keys torch.float32"),
    ):
        with pytest.raises(ValueError, match=message):
            layers.kv_cache.cached_attention(q, k, v, layers.KVCache(2, 4, H, E // H))
    cache.reset()
    assert cache.lengths.tolist() == [0, 0] and not cache.started
