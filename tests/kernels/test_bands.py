"""Band masks (`kernels.sliding_window`, torch's CausalBias) on every backend, dense and variable length, against the
float64 reference with the materialised mask and torch's SDPA at the same precision; forward and every gradient."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from attention_checks import CPU_BACKENDS, assert_close_to_reference, leaf, only, random_qkv, skip_if_unavailable
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import kernels
from kernels import Backend, sliding_window
from kernels.reference import attention_reference

pytestmark = [
    pytest.mark.parametrize("backend", CPU_BACKENDS),
    pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs"),  # torch's; ours gives 0
]


def run(fn, tensors, mask, grad, dtype, **kwargs):
    leaves = [leaf(tensors[n], dtype) for n in ("query", "key", "value")]
    out = fn(*leaves, attn_mask=mask, **kwargs)
    out.backward(grad.to(dtype))
    return {
        "out": out.detach(),
        **{f"grad_{n}": t.grad for n, t in zip(("query", "key", "value"), leaves, strict=True)},
    }


def check_band(backend, band, L, S, heads=2, kv_heads=None, dim=16, batch=(2,), dtype=torch.float32):
    tensors = random_qkv(batch, heads, L, S, dim, kv_heads=kv_heads)
    skip_if_unavailable(backend, tensors["query"].to(dtype))
    gqa = kv_heads is not None and kv_heads != heads
    grad = torch.randn(*batch, heads, L, dim, dtype=torch.float64)
    dense = band._materialize() if hasattr(band, "_materialize") else band.materialize()
    with only(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "lower right causal bias will produce NaNs" (not ours)
        ours = run(kernels.scaled_dot_product_attention, tensors, band, grad, dtype, enable_gqa=gqa)
    empty = ~dense.any(-1)  # rows with nothing to attend to: 0, where torch gives NaN
    theirs = run(torch.nn.functional.scaled_dot_product_attention, tensors, dense | empty[:, None], grad, dtype,
                 enable_gqa=gqa)  # fmt: skip
    theirs["out"] = theirs["out"].masked_fill(empty[:, None], 0.0)
    ref = run(attention_reference, tensors, dense, grad, torch.float64, enable_gqa=gqa)
    if empty.any():
        assert (ours["out"][..., empty, :] == 0).all() and (ours["grad_query"][..., empty, :] == 0).all()
        theirs = {**ref, **{k: v.to(dtype) for k, v in ref.items()}}  # torch has no answer there: compare to float64
    assert_close_to_reference(ours, theirs, ref, dtype)


@pytest.mark.parametrize("L,S", [(37, 53), (53, 37), (64, 64)])
@pytest.mark.parametrize("variant", ["upper_left", "lower_right"])
def test_causal_bias_both_alignments(backend, L, S, variant):
    band = (causal_upper_left if variant == "upper_left" else causal_lower_right)(L, S)
    check_band(backend, band, L, S)


@pytest.mark.parametrize("left,right", [(0, 0), (5, 0), (16, 3), (40, 40), (None, 7)])
@pytest.mark.parametrize("lower_right", [False, True])
def test_sliding_windows(backend, left, right, lower_right):
    check_band(backend, sliding_window(70, 90, left, right, lower_right), 70, 90)


def test_window_on_long_sequences_with_gqa_and_fp16(backend):
    """Long enough that TORCH computes the window chunk by chunk; GQA; half precision."""
    check_band(backend, sliding_window(300, 300, 24), 300, 300, heads=4, kv_heads=2, dtype=torch.float16, batch=(1,))


def test_window_chunks_are_used_and_equal_the_mask(backend):
    """TORCH's chunked window equals the materialised mask and takes work L x window (the gathered key slices)."""
    from kernels.dispatch import torch_sdpa
    from kernels.window import windowed_attention

    q, k, v = (torch.randn(2, 3, 600, 16) for _ in range(3))
    band = sliding_window(600, 600, 63, 0, False)
    chunked = windowed_attention(torch_sdpa, q, k, v, band, 0.0, None, False)
    assert chunked is not None
    torch.testing.assert_close(chunked, torch_sdpa(q, k, v, band.materialize()), rtol=1e-5, atol=1e-5)
    assert windowed_attention(torch_sdpa, q[:, :, :40], k[:, :, :40], v[:, :, :40], band, 0.0, None, False) is None


@pytest.mark.parametrize("L,S", [(400, 700), (700, 400)])
@pytest.mark.parametrize("lower_right", [False, True])
def test_chunked_windows_both_alignments_with_gradients(backend, L, S, lower_right):
    """Windows long enough to be chunked on TORCH (keys padded on both sides, a last partial chunk, a batch of 2):
    outputs and every gradient against torch with the mask and float64."""
    from kernels.dispatch import torch_sdpa
    from kernels.window import windowed_attention

    if backend is not kernels.Backend.TORCH:
        pytest.skip("only TORCH computes windows chunk by chunk (the other backends' bands are tested above)")
    band = sliding_window(L, S, 20, 5, lower_right)
    q, k, v = (torch.randn(2, 1, n, 8) for n in (L, S, S))
    assert windowed_attention(torch_sdpa, q, k, v, band, 0.0, None, False) is not None
    check_band(backend, band, L, S, dim=8)


@pytest.mark.parametrize("layout", ["contiguous", "heads interleaved"])
def test_chunked_window_batches_without_copying_key_slices(backend, layout):
    """At batch > 1 the chunks run as one call over (chunk, batch x head) with the key slices as views of the keys
    (contiguous ``(N, H, S, E)``), or of one contiguous copy (heads interleaved in the tokens, as a layer's
    projections leave them); outputs and every gradient against float64."""
    from kernels.dispatch import torch_sdpa
    from kernels.window import windowed_attention

    if backend is not kernels.Backend.TORCH:
        pytest.skip("only TORCH computes windows chunk by chunk")
    N, H, L, E = 3, 2, 300, 8
    band = sliding_window(L, L, 40, 3)
    base = [torch.randn(N, H, L, E, dtype=torch.float64) for _ in range(3)]
    leaves = [t.float().requires_grad_() for t in base]
    if layout == "contiguous":
        ours = leaves
    else:  # the same values with (N, L, H, E) memory, gradients flowing to the leaves
        ours = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in leaves]
        assert not ours[1].is_contiguous()
    keys_seen = []

    def attend(q, k, v, mask, *args):
        keys_seen.append(k)
        return torch_sdpa(q, k, v, mask, *args)

    out = windowed_attention(attend, *ours, band, 0.0, None, False)
    chunk_keys = keys_seen[0]
    assert chunk_keys.size(1) == N * H and chunk_keys.size(2) > chunk_keys.size(0)  # (chunks, N * H, span, E)
    # overlapping windows (a view): chunk c + 1 starts inside chunk c's slice; a copy of the slices would not
    assert chunk_keys.stride(0) < chunk_keys.size(2) * chunk_keys.stride(2)
    if layout == "contiguous":
        assert chunk_keys.untyped_storage().data_ptr() == ours[1].untyped_storage().data_ptr()  # a view
    refs = [t.clone().requires_grad_() for t in base]
    ref = attention_reference(*refs, band.materialize())
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for name, mine, r in zip("qkv", leaves, refs, strict=True):
        torch.testing.assert_close(mine.grad.double(), r.grad, rtol=1e-5, atol=1e-5, msg=f"grad of {name}")


def offsets(lengths):
    return torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))


@pytest.mark.parametrize("lower_right", [False, True])
def test_varlen_band_per_sequence(backend, lower_right):
    """A band made for any length applies to each packed sequence with its own lengths."""
    q_lens, k_lens = [5, 30, 1, 12], [9, 30, 4, 3]
    band = sliding_window(None, None, 6, 2, lower_right)
    q = torch.randn(sum(q_lens), 2, 16, dtype=torch.float64)
    k, v = (torch.randn(sum(k_lens), 2, 16, dtype=torch.float64) for _ in range(2))
    skip_if_unavailable(backend, q.float(), varlen=True)
    grad = torch.randn_like(q)
    leaves = [leaf(t, torch.float32) for t in (q, k, v)]
    with only(backend):
        out = kernels.varlen_attention(*leaves, offsets(q_lens), offsets(k_lens), attn_mask=band)
    out.backward(grad.float())
    qo, ko = offsets(q_lens).tolist(), offsets(k_lens).tolist()
    for b in range(len(q_lens)):
        qs, ks = slice(qo[b], qo[b + 1]), slice(ko[b], ko[b + 1])
        mask = band.materialize(q_lens[b], k_lens[b])
        parts = [t[s].detach().transpose(0, 1).requires_grad_() for t, s in ((q, qs), (k, ks), (v, ks))]
        ref = attention_reference(*parts, attn_mask=mask)
        ref.backward(grad[qs].transpose(0, 1))
        torch.testing.assert_close(out[qs].double(), ref.transpose(0, 1).detach(), rtol=1e-4, atol=1e-5)
        for got, part in zip((leaves[0].grad[qs], leaves[1].grad[ks], leaves[2].grad[ks]), parts, strict=True):
            torch.testing.assert_close(got.double(), part.grad.transpose(0, 1), rtol=1e-4, atol=1e-5)


def test_nested_band(backend):
    parts = [torch.randn(n, 2, 8) for n in (3, 11, 6)]
    x = torch.nested.as_nested_tensor(parts, layout=torch.jagged).transpose(1, 2)
    band = sliding_window(None, None, 2)
    with only(backend):
        out = kernels.scaled_dot_product_attention(x, x, x, attn_mask=band)
    for o, p in zip(out.transpose(1, 2).unbind(), parts, strict=True):
        alone = attention_reference(*(p.transpose(0, 1),) * 3, attn_mask=band.materialize(len(p), len(p)))
        torch.testing.assert_close(o, alone.transpose(0, 1), rtol=1e-4, atol=1e-5)


def test_explain_describes_the_band(backend):
    q = torch.randn(1, 2, 12, 8)
    why = kernels.explain(q, q, q, attn_mask=sliding_window(12, 12, 3, 0, lower_right=True))
    assert "mask: sliding window (3 keys before, 0 after; bottom-right aligned)" in str(why)
    why = kernels.explain(q, q, q, attn_mask=causal_lower_right(12, 12))
    assert "mask: causal, bottom-right aligned" in str(why)


ERRORS = [
    (lambda q: kernels.scaled_dot_product_attention(q, q, q, attn_mask=sliding_window(5, 12, 2)), ValueError,
     "was made for L=5, S=12 but query and key have L=12, S=12"),
    (lambda q: kernels.scaled_dot_product_attention(q, q, q, attn_mask=causal_lower_right(12, 12), is_causal=True),
     ValueError, "attn_mask and is_causal=True were both given"),
    (lambda q: sliding_window(12, 12, -1), ValueError, "sliding_window: left must be a non-negative int or None"),
    (lambda q: sliding_window(12, 12, None, None), ValueError, "left and right are both None"),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(ERRORS)))
def test_band_errors(backend, case):
    make, error, message = ERRORS[case]
    with only(backend), pytest.raises(error, match=re.escape(message)):
        make(torch.randn(1, 2, 12, 8))


def test_nested_band_made_for_fixed_lengths_is_refused(backend):
    x = torch.nested.nested_tensor([torch.randn(3, 2, 8), torch.randn(5, 2, 8)], layout=torch.jagged).transpose(1, 2)
    with only(backend), pytest.raises(ValueError, match=r"make it for any length, e\.g\. kernels\.sliding_window"):
        kernels.scaled_dot_product_attention(x, x, x, attn_mask=causal_lower_right(5, 5))


def test_triton_has_no_mask_tensor_for_bands(backend):
    if backend is not Backend.TRITON:
        pytest.skip("the fused kernels' band is a kernel constant; other backends build masks")
    skip_if_unavailable(backend, torch.empty(1, 1, 1))
    from kernels.triton import ops

    q = torch.randn(1, 2, 40, 16)
    launch, _, _ = ops.forward_launch(q, q, q, None, None, 0.0, 0.25, 7, 0, True, False, ops._Layout(q, q))
    assert launch.args[3] is None and launch.kwargs["HAS_LEFT"] and launch.kwargs["LOWER_RIGHT"]


def test_chunked_window_compiles_and_splits_its_edges(backend):
    """The chunks whose key slices lie inside the keys run as one call; the rows before and after them (here: the
    first chunks, and a last partial one) run over the keys they see. Equal to the reference, eager and compiled."""
    from kernels.dispatch import torch_sdpa
    from kernels.window import windowed_attention

    if backend is not kernels.Backend.TORCH:
        pytest.skip("only TORCH computes windows chunk by chunk")
    q, k, v = (torch.randn(1, 2, 300, 8) for _ in range(3))
    band = sliding_window(300, 300, 40)
    calls = []

    def attend(q, k, v, mask, *args):
        calls.append((q.size(0), q.size(-2), k.size(-2), tuple(mask.shape)))
        return torch_sdpa(q, k, v, mask, *args)

    eager = windowed_attention(attend, q, k, v, band, 0.0, None, False)
    # chunks of 32 queries, 72 keys each: 9 whole chunks with slices inside the keys, 32 rows before, 12 after
    assert calls == [(7, 32, 72, (32, 72)), (1, 64, 64, (64, 64)), (1, 12, 52, (12, 52))]
    torch.testing.assert_close(eager, attention_reference(q, k, v, band.materialize()), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    with only(backend):
        compiled = torch.compile(
            lambda q, k, v: kernels.scaled_dot_product_attention(q, k, v, attn_mask=band), fullgraph=True
        )
        torch.testing.assert_close(compiled(q, k, v), eager, rtol=1e-5, atol=1e-5)
