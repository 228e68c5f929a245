"""The fused Triton kernels themselves (under the Triton interpreter without a GPU): odd shapes, head dims,
strides, the torch.library registration, and torch.compile."""

from __future__ import annotations

import pytest
import torch
from attention_checks import compare_backend, random_qkv, skip_if_unavailable

import kernels
from kernels import Backend

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torch._library")


def _skip_without_triton():
    skip_if_unavailable(Backend.TRITON, torch.empty(1, 1, 1))


# (batch dims, heads, L, S, E, Ev): L = 1, 17, 129; S != L; batch 3; heads 5.
ODD_SHAPES = [((3,), 5, 1, 17, 16, 16), ((3,), 5, 17, 129, 32, 32), ((1,), 2, 129, 33, 16, 24), ((2,), 1, 65, 1, 8, 8)]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_odd_shapes(shape, is_causal):
    batch, h, L, S, E, Ev = shape
    compare_backend(Backend.TRITON, random_qkv(batch, h, L, S, E, Ev), is_causal=is_causal)


@pytest.mark.parametrize("head_dim", [16, 24, 80, 96, 128, 192, 256])
def test_head_dims(head_dim):
    dtype = torch.float32 if head_dim <= 128 else torch.float16  # float32 stops at 128 (register spills)
    compare_backend(Backend.TRITON, random_qkv((1,), 2, 19, 23, head_dim), dtype, is_causal=True)


def _fused_step(attend, q, k, v, grad) -> tuple[torch.Tensor, ...]:
    """``attend(q, k, v)`` on ``Backend.TRITON`` from fresh leaves and a fixed seed (the same dropout draws every
    call): ``(out, dq, dk, dv)`` for the upstream gradient ``grad``."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(3)
    with kernels.sdpa_kernel(Backend.TRITON):
        out = attend(*leaves)
    return (out, *torch.autograd.grad(out, leaves, grad))


ONE, SPLIT, HALVES = ((0, 0),), ((1, 0), (2, 0)), ((1, 1), (1, 2), (2, 1), (2, 2))  # dK/dV's (PART, HALF) launches


def test_dkdv_above_head_dim_128_is_two_launches():
    """Above head dim 128 on sm_90 without extra state, or with one feature of it where the installed Triton's table
    keeps a spill-free wgmma tile for that feature, dK/dV runs as a dV launch and a dK launch (one accumulator each
    leaves registers for wgmma's tiles); with a few features live (a mask and dropout, say: no split tile is
    spill-free) each of those runs once per half of its columns where the table keeps a tile for that; with more,
    at 128 and below, and on sm_80, one launch computes both."""
    import torch

    from kernels.triton import ops, tiles

    assert ops.dkdv_parts(90, 128, 128, "plain") == ops.dkdv_parts(90, 128, 128, "tile", True, "tile-bool") == ONE
    assert ops.dkdv_parts(90, 160, 64, "plain") == ops.dkdv_parts(90, 64, 256, "plain") == SPLIT
    assert ops.dkdv_parts(80, 256, 256, "plain") == ops.dkdv_parts(80, 256, 256, "tile", False, "tile-halves") == ONE
    assert ops.dkdv_parts(90, 256, 256, "tile", True, None) == ONE  # more state than the halves take
    for tma in (True, False):
        expected = HALVES if tiles.split_tiles(90, tma, 256, "tile-halves") else ONE
        assert ops.dkdv_parts(90, 256, 256, "tile", tma, "tile-halves") == expected
        on_pointers = HALVES if tiles.split_tiles(90, False, 256, "tile-halves") else ONE  # the pointer path's row
        assert ops.dkdv_parts(90, 256, 256, "tile", tma, "tile-halves", True) == on_pointers
        assert ops.dkdv_parts(90, 192, 64, "tile", tma, "tile-halves") == expected
        assert ops.dkdv_parts(90, 256, 16, "tile", tma, "tile-halves") == ONE  # halves of 8 columns: too narrow
    fp16, kernel = torch.float16, "attn_bwd_dkdv"
    assert tiles.split_kind(kernel, fp16, 1, False) == "tile-bool" and tiles.split_kind(kernel, fp16, 0, True) == (
        "tile-dropout"
    )
    assert tiles.split_kind(kernel, fp16, 0, False, grouped=True) == "tile-gqa"
    # several features (`tiles.halves_take`): every combination a call makes; with grouped heads and a mask or
    # dropout on the pointer path (`tiles.halves_on_pointers`: the copy engine's dK half spills there)
    assert tiles.split_kind(kernel, fp16, 1, True) == tiles.split_kind(kernel, fp16, 0, True, True) == "tile-halves"
    assert tiles.split_kind(kernel, fp16, 0, True, True, True) == "tile-halves"  # packed, dropout, window
    assert tiles.split_kind(kernel, fp16, 0, False, True, True, True) == "tile-halves"  # packed, window, groups
    assert tiles.split_kind(kernel, fp16, 0, True, True, True, True) == "tile-halves"  # and dropout: four
    assert tiles.split_kind(kernel, fp16, 0, True, grouped=True) == "tile-halves"  # dropout, groups
    assert tiles.split_kind(kernel, fp16, 2, True, grouped=True) == "tile-halves"  # a mask, dropout, groups
    assert not tiles.halves_on_pointers(1, True) and not tiles.halves_on_pointers(0, False, True, True, True)
    assert tiles.halves_on_pointers(0, True, grouped=True) and tiles.halves_on_pointers(2, False, grouped=True)
    assert tiles.halves_on_pointers(0, True, True, True, True)  # packed, dropout, window, groups
    assert tiles.split_kind(kernel, fp16, 1, True, False, True, True) is None  # no call has a mask and a window
    # at head dim 128: one launch, but its dV and dK launches with grouped heads and a mask or dropout (64: one)
    assert tiles.split_kind(kernel, fp16, 2, True, grouped=True, block_d=128) == "tile-gqa-128"
    assert tiles.split_kind(kernel, fp16, 0, True, True, True, True, block_d=128) == "tile-gqa-128"
    assert tiles.split_kind(kernel, fp16, 0, True, True, True, True, block_d=64) is None
    assert tiles.split_kind(kernel, fp16, 1, False, grouped=True, block_d=128) == "tile-gqa-128"
    assert tiles.split_kind(kernel, fp16, 0, False, True, True, True, block_d=128) is None  # packed, window, groups
    assert tiles.split_kind(kernel, fp16, 0, True, block_d=128) is None
    for tma in (True, False):
        expected = SPLIT if tiles.split_tiles(90, tma, 128, "tile-gqa-128") else ONE
        assert ops.dkdv_parts(90, 128, 128, "tile", tma, "tile-gqa-128") == expected
    assert ops.dkdv_parts(80, 128, 128, "tile", False, "tile-gqa-128") == ONE
    assert tiles.split_kind("attn_fwd", fp16, 1, False) is None and tiles.split_kind(kernel, fp16, 0, False) is None
    assert tiles.split_kind(kernel, torch.float32, 1, False) is None
    bool_tiles = tiles.split_tiles(90, True, 256, "tile-bool")
    assert bool_tiles and all(n >= 64 for _, n, _, _ in bool_tiles)  # measured under both versions; wgmma's rows
    assert ops.dkdv_parts(90, 256, 256, "tile", True, "tile-bool") == SPLIT
    assert (
        ops.dkdv_parts(90, 128, 128, "tile", True, "tile-bool")
        == ops.dkdv_parts(80, 256, 256, "tile", False, "tile-bool")
        == ONE
    )
    for kind in ("tile-additive", "tile-dropout", "tile-varlen", "tile-window", "tile-gqa"):  # the table decides
        several = HALVES if tiles.split_tiles(90, True, 256, "tile-halves") else ONE  # an empty row: the halves
        expected = SPLIT if tiles.split_tiles(90, True, 256, kind) else several
        assert ops.dkdv_parts(90, 256, 256, "tile", True, kind) == expected, kind
    # dQ in halves only where the installed triton's table says so: head dim 256 with more state, on sm_90 and sm_80
    # under 3.6, on sm_80 only under 3.9
    import triton

    from kernels.triton import spill_free

    under_39 = spill_free.for_version(triton.__version__) is spill_free.TRITON_39
    assert ops.dq_parts(90, True, 256, "tile") == ((0,) if under_39 else (1, 2))
    assert ops.dq_parts(80, False, 256, "tile") == (1, 2)
    assert spill_free.dq_halves_for("3.9.0") == {(80, "ptr", 256, "tile")}
    assert spill_free.dq_halves_for("3.6.0") == {(80, "ptr", 256, "tile"), (90, "tma", 256, "tile")}
    assert ops.dq_parts(90, True, 256, "plain") == ops.dq_parts(80, False, 128, "tile") == (0,)


def test_one_feature_above_head_dim_128_runs_the_split_and_equals_the_reference(monkeypatch):
    """A bool mask alone at head dim 160 (fp16): the backward's dK/dV runs as its dV and dK launches (the table keeps
    a wgmma tile for that one feature under both Triton versions), against torch and float64, every gradient."""
    from kernels.triton import ops

    parts = []
    real = ops.dkdv_parts
    monkeypatch.setattr(ops, "dkdv_parts", lambda *args: parts.append(real(*args)) or parts[-1])
    tensors = random_qkv((1,), 2, 19, 23, 160)
    tensors["attn_mask"] = torch.rand(1, 1, 19, 23) > 0.3
    compare_backend(Backend.TRITON, tensors, torch.float16)
    assert parts == [SPLIT]


def test_a_few_features_above_head_dim_128_run_the_halves_and_equal_the_reference(monkeypatch):
    """Grouped heads with a sliding window at head dim 256 (fp16): the table sends dK/dV to its four half-head-dim
    launches (`tiles.halves_take`), and forward and every gradient stay within 2x torch's error of float64."""
    from attention_checks import compare_band

    from kernels.triton import ops

    _skip_without_triton()
    parts = []
    real = ops.dkdv_parts
    monkeypatch.setattr(ops, "dkdv_parts", lambda *args: parts.append(real(*args)) or parts[-1])
    band = kernels.sliding_window(33, 51, 10, 0, lower_right=True)  # every row sees keys
    compare_band(random_qkv((2,), 4, 33, 51, 256, kv_heads=2), band, torch.float16, enable_gqa=True)
    assert parts == [HALVES]


def test_grouped_heads_with_a_mask_run_the_halves_on_pointers_and_equal_the_reference(monkeypatch):
    """Grouped heads with a bool mask at head dim 160 (fp16), operands aligned for descriptors: the forward and dQ
    load through descriptors, dK/dV runs its four half-head-dim launches on the pointer path
    (`tiles.halves_on_pointers`), and forward and every gradient stay within 2x torch's error of float64."""
    from kernels.triton import ops

    _skip_without_triton()
    launches = []
    real = ops._run
    monkeypatch.setattr(ops, "_run", lambda launch: launches.append(launch) or real(launch))
    tensors = random_qkv((2,), 4, 19, 32, 160, kv_heads=2)
    tensors["attn_mask"] = torch.rand(2, 1, 19, 32) > 0.3
    compare_backend(Backend.TRITON, tensors, torch.float16, enable_gqa=True)
    paths = {(x.kernel, x.kwargs.get("PART", 0), x.kwargs.get("HALF", 0)): x.kwargs.get("USE_TMA") for x in launches}
    assert {key[1:] for key in paths if key[0] == "attn_bwd_dkdv"} == set(HALVES)
    assert not any(tma for key, tma in paths.items() if key[0] == "attn_bwd_dkdv")
    assert paths[("attn_fwd", 0, 0)] and all(tma for key, tma in paths.items() if key[0] == "attn_bwd_dq")


@pytest.mark.parametrize("descriptors", [True, False], ids=["descriptors", "pointers"])
def test_grouped_heads_with_dropout_at_head_dim_128_run_dv_and_dk_apart(descriptors, monkeypatch):
    """Grouped heads, dropout and a bool mask at head dim 96 (fp16): the table sends dK/dV to its dV and dK launches
    (`tiles.groups_split`: no one-launch wgmma tile is spill-free there), which give exactly what the one
    launch gives, the dropout keep mask regenerated alike in both, every gradient."""
    _skip_without_triton()
    from kernels.triton import ops, tiles

    if not tiles.split_tiles(90, descriptors, 128, "tile-gqa-128"):
        pytest.skip("the installed triton's table keeps no tile for this split on this path: one launch")
    monkeypatch.setattr(ops, "DESCRIPTORS", descriptors)
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 19, 96, generator=gen).half()  # padded to 128: the dims past 96 masked
    k, v = (torch.randn(2, 2, 23, 96, generator=gen).half() for _ in range(2))
    mask = torch.rand(2, 1, 19, 23, generator=gen) > 0.3
    grad = torch.randn(2, 4, 19, 96, generator=gen).half()

    def gradients():
        return _fused_step(
            lambda *qkv: kernels.scaled_dot_product_attention(*qkv, mask, dropout_p=0.2, enable_gqa=True), q, k, v, grad
        )

    parts = []
    real = ops.dkdv_parts
    monkeypatch.setattr(ops, "dkdv_parts", lambda *args: parts.append(real(*args)) or parts[-1])
    split = gradients()
    assert parts == [SPLIT]
    monkeypatch.setattr(ops, "dkdv_parts", lambda *args: ONE)
    for name, a, b in zip(("out", "dq", "dk", "dv"), split, gradients(), strict=True):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("descriptors", [True, False], ids=["descriptors", "pointers"])
@pytest.mark.parametrize("case", ["mask+gqa+dropout", "varlen+window+dropout"])
@pytest.mark.parametrize("dkdv", [SPLIT, HALVES], ids=["dv+dk", "dv+dk-halves"])
def test_backward_in_two_launches_equals_one(case, descriptors, dkdv, monkeypatch):
    """The split backward (dK/dV as a dV and a dK launch, or each of those once per half of its columns, as the
    "tile-halves" row turns on with a few features live; dQ as one launch per half of the head dim, which
    `tiles.dq_halves` turns on at head dim 256 with more state under triton 3.6; all forced here) gives what the
    one-launch kernels give for the same inputs (the halves to within a rounding), with every feature whose state
    the launches must agree on: a mask, grouped heads, the dropout keep mask regenerated in each, a window, packed
    sequences; value head dim != key head dim, and head dims (160 and 72 for keys and values) whose second halves
    are partly padding."""
    _skip_without_triton()
    from kernels.triton import ops

    monkeypatch.setattr(ops, "DESCRIPTORS", descriptors)  # both load/store paths (the interpreter runs either)
    gen = torch.Generator().manual_seed(5)
    if case.startswith("mask"):
        q = torch.randn(2, 4, 19, 160, generator=gen).half()
        k = torch.randn(2, 2, 23, 160, generator=gen).half()
        v = torch.randn(2, 2, 23, 72, generator=gen).half()
        mask = torch.rand(2, 1, 19, 23, generator=gen) > 0.3

        def attend(q, k, v):
            return kernels.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.2, enable_gqa=True)
    else:
        cu = torch.tensor([0, 7, 30, 31])
        q, k = (torch.randn(31, 2, 192, generator=gen).half() for _ in range(2))
        v = torch.randn(31, 2, 192, generator=gen).half()
        band = kernels.sliding_window(None, None, 5, 0, lower_right=True)

        def attend(q, k, v):
            return kernels.varlen_attention(q, k, v, cu, cu, attn_mask=band, dropout_p=0.2)

    grad = torch.randn(*q.shape[:-1], v.size(-1), generator=gen).half()

    def gradients():
        return _fused_step(attend, q, k, v, grad)

    monkeypatch.setattr(ops, "dkdv_parts", lambda arch, D, DV, kind, *split: dkdv)  # forced: these cases have state
    monkeypatch.setattr(ops, "dq_parts", lambda arch, tma, D, kind: (1, 2))
    split = gradients()
    monkeypatch.setattr(ops, "dkdv_parts", lambda arch, D, DV, kind, *split: ONE)
    monkeypatch.setattr(ops, "dq_parts", lambda arch, tma, D, kind: (0,))
    one = gradients()
    # the halves' products over half the columns may sum an element in another order (numpy's matmul picks its
    # kernel by shape): within one fp16 rounding; everything else bitwise
    tol = {"rtol": 2**-10, "atol": 2**-24} if dkdv == HALVES else {"rtol": 0, "atol": 0}
    for name, a, b in zip(("out", "dq", "dk", "dv"), split, one, strict=True):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_head_dims_above_the_cap_say_why():
    from kernels import triton as triton_backend

    q = torch.randn(1, 2, 8, 320)
    assert f"head dim 320 > {triton_backend.MAX_HEAD_DIM}" in triton_backend.unavailable_reasons(q, q, q)


def test_fp16_masked_gqa():
    tensors = random_qkv((2,), 6, 21, 37, 64, kv_heads=2)
    keep = torch.rand(2, 1, 21, 37) > 0.3
    compare_backend(Backend.TRITON, {**tensors, "attn_mask": keep}, torch.float16, enable_gqa=True)


def test_expanded_upstream_gradient():
    """``out.sum().backward()`` hands the backward a stride-0 gradient: read through strides, not assumed."""
    _skip_without_triton()
    q, k, v = (torch.randn(2, 3, 9, 16, requires_grad=True) for _ in range(3))
    with kernels.sdpa_kernel(Backend.TRITON):
        kernels.scaled_dot_product_attention(q, k, v).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    for got, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-5)


def test_opcheck():
    """The custom ops pass torch.library.opcheck (schema, fake tensors, autograd registration)."""
    _skip_without_triton()
    from kernels.triton.ops import flash_attention_bwd, flash_attention_fwd

    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    keep = torch.rand(1, 2, 8, 8) > 0.2
    seed = torch.zeros(1, dtype=torch.int64)
    fwd_args = (q, k, v, keep, seed, 0.1, 0.25, -1, 0, False, False)
    torch.library.opcheck(flash_attention_fwd, fwd_args)
    out, lse = flash_attention_fwd(*fwd_args)
    bwd_args = (
        torch.randn_like(out),
        q.detach(),
        k.detach(),
        v.detach(),
        keep,
        seed,
        out.detach(),
        lse,
        0.1,
        0.25,
        -1,
        0,
        False,
        False,
    )
    # The backward op has no backward of its own (no double backward): its autograd checks do not apply.
    torch.library.opcheck(flash_attention_bwd, bwd_args, test_utils=("test_schema", "test_faketensor"))

    from kernels.triton.ops import flash_attention_varlen_fwd

    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    packed = [torch.randn(8, 2, 16, requires_grad=True) for _ in range(3)]
    torch.library.opcheck(flash_attention_varlen_fwd, (*packed, cu, cu, None, 0.0, 0.25, -1, 0, False, False))


def test_torch_compile_fullgraph_through_the_op():
    _skip_without_triton()
    q, k, v = (torch.randn(2, 2, 12, 16, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        with kernels.sdpa_kernel(Backend.TRITON):
            return kernels.scaled_dot_product_attention(q, k, v, is_causal=True)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    out.sum().backward()
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_varlen_compiles_once_for_every_set_of_lengths():
    """Sequence lengths are data: one graph, no graph break, no recompilation as lengths change."""
    skip_if_unavailable(Backend.TRITON, torch.empty(1, 1, 1), varlen=True)
    from torch._dynamo.utils import counters

    def attend(q, k, v, cu):
        return kernels.varlen_attention(q, k, v, cu, cu, is_causal=True)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager", dynamic=True)
    for lengths in ([3, 5], [7, 1, 4], [10, 2, 2, 9]):
        cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))
        q, k, v = (torch.randn(sum(lengths), 2, 16, requires_grad=True) for _ in range(3))
        with kernels.sdpa_kernel([Backend.TRITON]):
            out = compiled(q, k, v, cu)
        out.sum().backward()
        with kernels.sdpa_kernel([Backend.TORCH]):
            torch.testing.assert_close(out, attend(q, k, v, cu), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


def test_fused_decoding_runs_kernels_only():
    """The split kernel and the combine kernel are the whole call: no torch operation beyond allocating the
    partials and the output (on a GPU each torch operation is a launch, and a small model's step is launch-bound);
    the combine writes the output the op returns."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from kernels.triton import ops

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    _skip_without_triton()
    kc = vc = torch.randn(2, 2, 600, 32)
    q, lengths = torch.randn(2, 8, 1, 32), torch.tensor([600, 77])
    seen: list[str] = []
    with Record():  # ops.decode_attention_op is these launches (the interpreter's own copies are not recorded)
        launches, out = ops.decode_launches(q, kc, vc, lengths, 32**-0.5, False)
    assert [launch.kernel for launch in launches] == ["attn_decode_split", "attn_decode_combine"]
    assert set(seen) <= {"empty", "new_empty", "empty_like", "empty_strided"}, seen
    for launch in launches:
        ops._run(launch)
    torch.testing.assert_close(out, ops.decode_attention_op(q, kc, vc, lengths, 32**-0.5, False), rtol=0, atol=0)


@pytest.fixture
def stand_in_tuner(monkeypatch):
    """A stand-in for the forward's autotuner that records a key the way Triton's does (under the interpreter there
    is one tile and no tuning), with the launchers' memory of its choices emptied for the test and restored after.
    Yields ``(tuner, calls)``: ``calls`` lists ``("tuner", key)`` for a launch through the autotuner and
    ``("kernel", key)`` for one straight to the kernel."""
    import triton

    from kernels.triton import ops, tiles

    calls = []

    class Kernel:
        def run(self, *args, grid, warmup, key, **config):
            calls.append(("kernel", key))

    class StandIn(triton.runtime.Autotuner):
        def __init__(self):  # no kernel behind it: the cache, the key and the launch
            self.cache, self.fn, self.arg_names, self.keys = {}, Kernel(), ["X", "key"], ["key"]
            self.best_config = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8)

        def __getitem__(self, grid):
            def launch(*args, key):
                calls.append(("tuner", key))
                self.cache.setdefault(key, self.best_config)

            return launch

    saved = dict(tiles.chosen)
    tiles.chosen.clear()
    ops._key_positions.cache_clear()
    monkeypatch.setitem(ops.KERNELS, "attn_fwd", StandIn())
    yield ops.KERNELS["attn_fwd"], calls
    ops._key_positions.cache_clear()
    tiles.chosen.clear()
    tiles.chosen.update(saved)


def test_a_new_autotune_key_is_logged_once(stand_in_tuner, caplog):
    """A first call that tunes (seconds of compiling and timing tiles on a GPU) says so through logging, once per
    key; calls that reuse the choice log nothing."""
    import logging

    from kernels.triton import ops

    with caplog.at_level(logging.INFO, logger="kernels.triton.ops"):
        for key in ("L=1024", "L=1024", "L=4096"):
            ops._run(ops.Launch("attn_fwd", (1,), (torch.empty(1),), {"key": key}))
    messages = [r.getMessage() for r in caplog.records if r.name == "kernels.triton.ops"]
    assert len(messages) == 2
    assert all(m.startswith("attn_fwd: tuned for a new shape in ") and "BLOCK_M: 128" in m for m in messages)


def test_a_tuned_key_launches_the_kernel_directly(stand_in_tuner):
    """Once the autotuner chose a tile for a key, launches with that key go straight to the kernel with that tile
    (the autotuner's per-call bookkeeping costs tens of microseconds of host time); a new key, or a forced tile
    (`tiles.forced` forgets the choices), goes through the autotuner again."""
    from kernels.triton import ops, tiles

    _, calls = stand_in_tuner
    launch = {key: ops.Launch("attn_fwd", (1,), (torch.empty(1),), {"key": key}) for key in ("a", "b")}
    for key in ("a", "a", "a", "b", "b"):
        ops._run(launch[key])
    assert calls == [("tuner", "a"), ("kernel", "a"), ("kernel", "a"), ("tuner", "b"), ("kernel", "b")]
    assert tiles.chosen[ops.tuning_key(launch["a"])].kwargs == {"BLOCK_M": 128, "BLOCK_N": 64}
    with tiles.forced("attn_fwd", tiles.CONFIGS["attn_fwd"][0]):
        ops._run(launch["a"])
    assert calls[-1] == ("tuner", "a")


def test_the_launchers_key_holds_what_the_autotuner_keys_on():
    """`ops.tuning_key` is the autotuner's key (its key values by name, and every argument's dtype), read from the
    launch's positions: two launches that the autotuner tells apart (here: grouped heads, which change dK/dV's
    tiles, and the dtype) differ in it; two it does not (another batch size, other strides) share it."""
    from kernels.triton import ops, tiles

    def launch(batch=2, heads=4, kv_heads=4, dtype=torch.float32, transpose=False):
        q = torch.randn(batch, heads, 40, 32, dtype=dtype)
        kv = torch.randn(batch, kv_heads, 40, 32, dtype=dtype)
        if transpose:
            q = q.transpose(1, 2).contiguous().transpose(1, 2)
        launches, *_ = ops.backward_launches(q, q, kv, kv, None, None, q, torch.empty(batch * heads, 40), 0.0, 0.2,
                                             -1, -1, False, False, ops._Layout(q, kv), tma=False, arch=90)  # fmt: skip
        return next(x for x in launches if x.kernel == "attn_bwd_dkdv")

    base = launch()
    tuner = ops.KERNELS["attn_bwd_dkdv"]
    named = {**dict(zip(tuner.arg_names, base.args, strict=False)), **base.kwargs}
    assert "GROUP" in tiles.AUTOTUNE_KEY
    assert ops.tuning_key(base)[1:3] == (
        tuple(named[k] for k in tuner.keys if k in dict(zip(tuner.arg_names, base.args, strict=False))),
        tuple(base.kwargs[k] for k in tuner.keys if k in base.kwargs),
    )
    assert ops.tuning_key(base) == ops.tuning_key(launch(batch=3)) == ops.tuning_key(launch(transpose=True))
    assert ops.tuning_key(base) != ops.tuning_key(launch(kv_heads=2))
    assert ops.tuning_key(base) != ops.tuning_key(launch(dtype=torch.float16))


def test_eager_calls_skip_the_ops_dispatch_and_equal_the_ops(monkeypatch):
    """In eager mode the fused kernels run through an autograd.Function (`ops._Dense`/`ops._Packed`), not the
    custom ops: the dispatcher's per-call work is host time on every layer. The results, gradients included, equal
    the ops' bitwise; anything that traces (a dispatch mode here; torch.compile in the test above) sees the ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from kernels.triton import ops

    _skip_without_triton()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    q, k, v = (torch.randn(2, 3, 20, 16) for _ in range(3))
    grad = torch.randn(2, 3, 20, 16)

    def step():
        return _fused_step(lambda *t: kernels.scaled_dot_product_attention(*t, dropout_p=0.2), q, k, v, grad)

    seen: list[str] = []
    with Record():
        traced = step()
    assert {"flash_attention_fwd", "flash_attention_bwd"} <= set(seen)
    calls = []
    monkeypatch.setattr(ops, "flash_attention_fwd", lambda *a: calls.append(a))  # the op must not be called
    eager = step()
    assert calls == []
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)
