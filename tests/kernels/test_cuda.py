"""GPU numerics of the fused kernels (``pytest -m cuda``, part of ``make gpu-check``): what only a GPU shows.

Every dtype (bfloat16 numerics are checked here only: the Triton interpreter computes bfloat16 wrongly); every tile
the autotuner keeps, forced one at a time; masks, dropout, GQA, variable length, bands, the decode kernel; a
deterministic backward; tensors past 2^31 elements; compiled steps that neither recompile nor synchronise.
Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from attention_checks import LIMIT, compare_backend, compare_band, forward_backward, max_error, random_qkv

import kernels
from kernels import Backend, sliding_window
from kernels.reference import attention_reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run pytest -m cuda on one)"),
]


def _cuda(tensors):
    return {name: t.cuda() for name, t in tensors.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_large_shapes(dtype, head_dim, is_causal):
    compare_backend(Backend.TRITON, _cuda(random_qkv((2,), 8, 1024, 1024, head_dim)), dtype, is_causal=is_causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masks_gqa_and_odd_lengths(dtype):
    """Head dim 80 (padded to 128) with grouped heads and a mask: on sm_90 dK/dV runs as its dV and dK launches
    (`tiles.groups_split`); against float64 and torch."""
    tensors = _cuda(random_qkv((3,), 8, 517, 1031, 80, kv_heads=2))
    keep = torch.rand(3, 1, 517, 1031, device="cuda") > 0.2
    compare_backend(Backend.TRITON, {**tensors, "attn_mask": keep}, dtype, enable_gqa=True)
    bias = torch.randn(517, 1031, device="cuda")
    compare_backend(Backend.TRITON, {**tensors, "attn_mask": bias}, dtype, enable_gqa=True)


@pytest.mark.parametrize("head_dim", [256])  # one head dim: each new variant costs compiles of the GPU check's budget
def test_head_dims_above_128_in_split_launches(head_dim):
    """Above 128 the backward runs dK/dV as a dV and a dK launch on sm_90, also with one feature of extra state
    (a bool mask alone: `tiles.split_kind`), each of those over half the head dim at a time with a few features
    (grouped heads and a window, a Gemma-2-like layer: `tiles.halves_take`), and (triton 3.6, with a mask) dQ in
    head-dim halves: each against float64 and torch (which gets the window as a bool mask)."""
    tensors = _cuda(random_qkv((2,), 4, 333, 517, head_dim))
    compare_backend(Backend.TRITON, tensors, torch.float16, is_causal=True)
    keep = torch.rand(2, 1, 333, 517, device="cuda") > 0.2
    compare_backend(Backend.TRITON, {**tensors, "attn_mask": keep}, torch.float16)
    grouped = _cuda(random_qkv((2,), 4, 333, 517, head_dim, kv_heads=2))
    band = sliding_window(333, 517, 100, 0, lower_right=True)  # every row sees keys (L < S, bottom-right)
    compare_band(grouped, band, torch.bfloat16, enable_gqa=True)


@pytest.mark.parametrize("L,S", [(300, 700), (700, 300)])
def test_causal_with_l_different_from_s(L, S):
    compare_backend(Backend.TRITON, _cuda(random_qkv((2,), 4, L, S, 64)), torch.float16, is_causal=True)


def _kept(kernel: str, head_dim: int, dtype: torch.dtype) -> list[tuple[int, int, int, int]]:
    from kernels.triton import tiles

    major, minor = torch.cuda.get_device_capability()
    kind = tiles.kind_of(kernel, dtype, 0, False)
    return tiles.kept_tiles(kernel, 10 * major + minor, major >= 9, tiles.block_dim(head_dim), kind)


@pytest.mark.parametrize("kernel", ["attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_kept_tile_is_correct(kernel, head_dim, index):
    """Each tile the autotuner may pick, forced alone (not only the winner), forward and gradients."""
    from kernels.triton import tiles

    kept = _kept(kernel, head_dim, torch.float16)
    if index >= len(kept):
        pytest.skip(f"{kernel} keeps {len(kept)} tile(s) at head dim {head_dim} on this card")
    with tiles.forced(kernel, kept[index]):
        compare_backend(Backend.TRITON, _cuda(random_qkv((2,), 4, 333, 333, head_dim)), torch.float16, is_causal=True)


def test_dropout_statistics_and_same_seed_determinism():
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    runs = []
    for seed in (7, 7):
        torch.manual_seed(seed)
        with kernels.sdpa_kernel([Backend.TRITON]):
            out = kernels.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        runs.append((out, grads))
    assert torch.equal(runs[0][0], runs[1][0]) and all(
        torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True)
    )
    # the kept fraction: with uniform weights and value = identity, each output entry is one weight, kept or dropped
    zeros = torch.zeros(4, 8, 512, 64, device="cuda", dtype=torch.float16)
    identity = torch.eye(64, device="cuda", dtype=torch.float16).expand(4, 8, 64, 64)
    with kernels.sdpa_kernel([Backend.TRITON]):
        weights = kernels.scaled_dot_product_attention(zeros, zeros[:, :, :64], identity, dropout_p=0.3)
    kept = (weights != 0).float().mean().item()
    assert abs(kept - 0.7) < 5 * (0.7 * 0.3 / weights.numel()) ** 0.5, kept


def test_backward_is_bitwise_deterministic():
    tensors = [torch.randn(2, 8, 1024, 128, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3)]
    grads = []
    for _ in range(2):
        with kernels.sdpa_kernel([Backend.TRITON]):
            out = kernels.scaled_dot_product_attention(*tensors, is_causal=True)
        grads.append(torch.autograd.grad(out.float().square().sum(), tensors))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_varlen_ragged_lengths_against_each_sequence():
    lengths = [1, 700, 33, 129, 0, 512]
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).cuda()
    q, k, v = (torch.randn(sum(lengths), 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with kernels.sdpa_kernel([Backend.TRITON]):
        out = kernels.varlen_attention(q, k, v, cu, cu, is_causal=True)
    starts = cu.tolist()
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        s = slice(starts[b], starts[b + 1])
        ref = attention_reference(*(t[s].transpose(0, 1).double() for t in (q, k, v)), is_causal=True)
        torch.testing.assert_close(out[s].double(), ref.transpose(0, 1), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("is_causal", [False, True])
def test_torch_runs_packed_sequences_through_torchs_varlen_attn(is_causal):
    """``TORCH`` on packed sequences calls torch's own ``varlen_attn`` (`kernels.torch_varlen`), grouped heads
    included: forward and gradients against float64, one sequence at a time (top-left causal, equal lengths)."""
    lengths = [1, 700, 33, 129, 512]
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).cuda()
    q = torch.randn(sum(lengths), 8, 128, device="cuda", dtype=torch.float16, requires_grad=True)
    k, v = (torch.randn(sum(lengths), 2, 128, device="cuda", dtype=torch.float16, requires_grad=True)
            for _ in range(2))  # fmt: skip
    if kernels.torch_varlen.reasons(q, k, v, None, 0.0, None, True):
        pytest.skip("; ".join(kernels.torch_varlen.reasons(q, k, v, None, 0.0, None, True)))
    calls = []
    real = kernels.torch_varlen._function()
    with pytest.MonkeyPatch.context() as patch, kernels.sdpa_kernel([Backend.TORCH]):
        patch.setattr(kernels.torch_varlen, "_function", lambda: (lambda *a, **kw: calls.append(1) or real[0](*a, **kw),
                                                                  real[1]))  # fmt: skip
        out = kernels.varlen_attention(q, k, v, cu, cu, is_causal=is_causal, enable_gqa=True)
    assert calls == [1] and not kernels.torch_varlen._broken, kernels.torch_varlen._broken  # served, not refused
    grad = torch.randn_like(out)
    out.backward(grad)
    starts = cu.tolist()
    for b in range(len(lengths)):
        s = slice(starts[b], starts[b + 1])
        leaves = [t[s].detach().transpose(0, 1).double().requires_grad_() for t in (q, k, v)]
        ref = attention_reference(*leaves, is_causal=is_causal, enable_gqa=True)
        ref.backward(grad[s].transpose(0, 1).double())
        torch.testing.assert_close(out[s].double(), ref.transpose(0, 1), rtol=2e-2, atol=2e-2)
        for t, leaf in zip((q, k, v), leaves, strict=True):
            torch.testing.assert_close(t.grad[s].double(), leaf.grad.transpose(0, 1), rtol=3e-2, atol=3e-2)


def test_bands_and_decode_kernel():
    tensors = _cuda(random_qkv((2,), 4, 900, 1000, 128))
    band = sliding_window(900, 1000, 127, 0, lower_right=True)
    ours = kernels.scaled_dot_product_attention(*(t.half() for t in tensors.values()), attn_mask=band)
    ref = attention_reference(*tensors.values(), attn_mask=band.materialize(device="cuda"))
    torch.testing.assert_close(ours.double(), ref, rtol=2e-2, atol=2e-2)
    kc, vc = (torch.randn(4, 2, 5000, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    lengths = torch.tensor([1, 4999, 2500, 5000], device="cuda")
    q = torch.randn(4, 8, 1, 128, device="cuda", dtype=torch.float16)
    out = kernels.decode_attention(q, kc, vc, lengths, enable_gqa=True)
    for b in range(4):
        n = int(lengths[b])
        ref = attention_reference(*(t[b : b + 1].double() for t in (q, kc[:, :, :n], vc[:, :, :n])), enable_gqa=True)
        torch.testing.assert_close(out[b : b + 1].double(), ref, rtol=2e-2, atol=2e-2)


def test_a_decoding_step_does_not_synchronise_and_a_full_cache_is_refused():
    """A cached step on the GPU reads nothing on the host (TRITON's split and combine kernels, the cache's append);
    past max_len the cache refuses before writing, with its message, instead of an out-of-range index."""
    import layers

    attn = layers.CausalSelfAttention(4, 64, is_causal=True).to("cuda", torch.float16).eval()
    cache = layers.KVCache(2, 8, 4, 16, torch.float16, "cuda")
    with torch.no_grad():
        attn(torch.randn(2, 6, 64, device="cuda", dtype=torch.float16), kv_cache=cache)  # the prompt (and compiles)
        attn(torch.randn(2, 1, 64, device="cuda", dtype=torch.float16), kv_cache=cache)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            attn(torch.randn(2, 1, 64, device="cuda", dtype=torch.float16), kv_cache=cache)  # 8 of 8 slots
        finally:
            torch.cuda.set_sync_debug_mode("default")
        with pytest.raises(ValueError, match=r"the cache is full: max_len=8, in use \[8, 8\]"):
            attn(torch.randn(2, 1, 64, device="cuda", dtype=torch.float16), kv_cache=cache)


def test_past_two_to_the_31_elements():
    """Keys and values of 3 x 2^30 elements each: base offsets past 2^31 need 64-bit arithmetic."""
    S = 1 << 23
    k, v = (torch.randn(3, 1, S, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    q = torch.randn(3, 1, 16, 128, device="cuda", dtype=torch.float16)
    with kernels.sdpa_kernel([Backend.TRITON]):
        out = kernels.scaled_dot_product_attention(q, k, v)
    last = torch.nn.functional.scaled_dot_product_attention(q[2:], k[2:], v[2:])
    torch.testing.assert_close(out[2:], last, rtol=2e-2, atol=2e-2)


def test_rows_with_nothing_to_attend_on_torch_cuda():
    """The TORCH backend's guard for empty rows, on CUDA where it is active."""
    tensors = _cuda(random_qkv((2,), 4, 64, 96, 64))
    keep = torch.rand(2, 1, 64, 96, device="cuda") > 0.5
    keep[:, :, 5] = False
    tensors = {**tensors, "attn_mask": keep}
    grad_out = torch.randn(2, 4, 64, 64, dtype=torch.float64, device="cuda")
    with kernels.sdpa_kernel([Backend.TORCH]):
        ours = forward_backward(kernels.scaled_dot_product_attention, tensors, grad_out, torch.float16)
    ref = forward_backward(attention_reference, tensors, grad_out, torch.float64)
    # torch's own CUDA kernels give the empty row a finite non-zero output (measured on an H200, torch 2.11: 0.58
    # away from the reference's 0), so `compare_backend`'s "within 2x torch's error" does not apply: each result is
    # held to the float16 limit against float64 directly, and the empty row is exactly 0.
    assert torch.equal(ours["out"][:, :, 5], torch.zeros_like(ours["out"][:, :, 5]))
    for name, r in ref.items():
        assert torch.isfinite(ours[name]).all(), f"{name} has NaN/inf"
        magnitude = max(1.0, r.abs().max().item())
        err = max_error(ours[name], r)
        assert err <= LIMIT[torch.float16] * magnitude, f"{name}: error {err:.3g} against float64"


def test_compiled_layer_does_not_recompile_across_lengths_and_varlen_step_does_not_sync():
    from torch._dynamo.utils import counters

    import layers

    torch._dynamo.reset()
    counters.clear()
    layer = layers.TransformerEncoderLayer(256, 4, 512, batch_first=True, device="cuda", dtype=torch.float16)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for lengths in ([300, 17, 1000], [5, 600], [128, 128, 128, 9]):
        x = torch.nested.nested_tensor([torch.randn(n, 256) for n in lengths], layout=torch.jagged,
                                       device="cuda", dtype=torch.float16)  # fmt: skip
        compiled(x).values().float().sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    x = torch.nested.nested_tensor([torch.randn(n, 256) for n in (40, 9)], layout=torch.jagged, device="cuda",
                                   dtype=torch.float16)  # fmt: skip
    compiled(x)  # warmed up (the autotuner synchronises while it benchmarks)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        compiled(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_measured_case_runs_torchs_fastest_kernel_first():
    """Where a sweep on this card measured TRITON slower (kernels/measured_order.json), the default order runs
    TORCH, and torch runs the kernel measured fastest (not the one torch would pick): bitwise its output."""
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as torch_sdpa_kernel

    from kernels import preferences

    q, k, v = (torch.randn(2, 4, 4096, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    entry = preferences.lookup(preferences._table(), torch.cuda.get_device_name(), q.dtype, 128, False, 4096)
    if entry is None:
        pytest.skip(f"no measured case for {torch.cuda.get_device_name()} at d=128 fp16 L=4096")
    assert "TORCH goes first" in str(kernels.explain(q, k, v))
    fastest = {"cuDNN": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}[entry["torch_kernel"]]  # fmt: skip
    with torch_sdpa_kernel([fastest]):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(kernels.scaled_dot_product_attention(q, k, v), expected)


def test_padded_layers_compute_densely_on_cuda_unless_asked_to_pack(monkeypatch):
    """On a GPU a padded batch runs over the whole padded batch by default (packing measured slower than torch's
    dense layer on an H200); ``layers.skip_padding(True)`` packs it: the same numbers on real tokens, 0 at padding."""
    import layers

    torch.manual_seed(0)
    encoder = layers.TransformerEncoder(
        layers.TransformerEncoderLayer(256, 4, 512, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False
    ).to("cuda", torch.float16)
    x = torch.randn(4, 200, 256, device="cuda", dtype=torch.float16)
    pad = torch.arange(200, device="cuda") >= torch.tensor([200, 57, 130, 1], device="cuda")[:, None]
    with layers.skip_padding(True):
        packed = encoder(x, src_key_padding_mask=pad)

    def refuse(*args, **kwargs):
        raise AssertionError("packed on CUDA by default")

    monkeypatch.setattr(layers.encoder, "pack_keep", refuse)
    dense = encoder(x, src_key_padding_mask=pad)
    assert (dense[pad] == 0).all() and (packed[pad] == 0).all()
    torch.testing.assert_close(dense, packed, atol=2e-2, rtol=2e-2)
