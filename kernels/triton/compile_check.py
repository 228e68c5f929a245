"""Offline compile check of the fused kernels for sm_80 and sm_90, without a GPU: ``python -m kernels.compile_check``.

**It compiles what the GPU runs.** Each variant is a real call of the launchers (`kernels.triton.ops`) on example
tensors laid out as a real call lays them out; the arguments are specialised by Triton's own JIT binder
(``create_function_from_signature`` + ``JITFunction._pack_args``: unit strides become constants, 16-byte aligned
pointers and integers divisible by 16 get ``tt.divisibility``) and compiled with ``triton.compile`` for the target.
``tests/kernels/test_compile_check.py`` proves that this specialisation equals what the JIT computes at launch.

For each variant it reports registers and spills (``ptxas -v``, bundled with triton), shared memory, CTAs per SM,
whether ``wgmma`` and the tensor-memory copy (``cp.async.bulk.tensor``) are used, and the hot loop's
warp-instructions per MFLOP (`kernels.triton.loop_profile`, from the SASS). A variant fails when it does not
compile, exceeds the architecture's shared memory, spills, lacks matrix instructions (``wgmma`` for fp16/bf16 on
sm_90, except where no tile that uses it compiles spill-free: dK/dV above head dim 128 with more state live), or,
on the copy-engine path of sm_90, does not use the copy engine.

The default is a covering set (every constexpr value and head-dim bucket at least once per kernel, every kept tile
of the main variants, both architectures); ``--full`` compiles the cross product (hours on 2 cores);
``--measure-tiles`` compiles every tile of every kernel, architecture, path, head-dim bucket and kind (each kind in
several feature combinations, `MEASURED_KINDS`), and prints the table those compiles support for the installed
triton (`kernels.triton.spill_free` holds one per measured version). Exits non-zero when a variant fails.

It must run in a process without ``TRITON_INTERPRET`` (the kernels must be real ``JITFunction``s).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile

SHARED_LIMIT = {80: 166_912, 90: 232_448}  # bytes of shared memory per block (TRITON-NOTES.md)
SHARED_PER_SM = {80: 167_936, 90: 233_472}
DTYPES = ("float16", "bfloat16", "float32")
HEAD_DIMS = (16, 24, 64, 80, 128, 192, 256)
KERNEL_NAMES = {
    "fwd": "attn_fwd",
    "bwd_dkdv": "attn_bwd_dkdv",
    "bwd_dq": "attn_bwd_dq",
    "bwd_pre": "attn_bwd_preprocess",
    "decode": "attn_decode_split",
    "decode_combine": "attn_decode_combine",
}
NO_MATMUL = ("bwd_pre", "decode_combine")  # kernels without a matrix product (no tile, no loop profile)
# The static-profile goals of the kernels issue, fp16, sm_90, no mask, no dropout, best kept tile.
LOOP_GOALS = {("fwd", 128): 520, ("fwd", 64): 1050, ("bwd_dq", 128): 650, ("bwd_dkdv", 128): 650}


@dataclasses.dataclass(frozen=True)
class Variant:
    kernel: str  # "fwd", "bwd_dkdv", "bwd_dq", "bwd_pre", "decode", "decode_combine"
    arch: int
    dtype: str = "float16"
    head_dim: int = 128
    causal: bool = False
    mask: int = 0  # 0 none, 1 bool, 2 additive
    dropout: bool = False
    varlen: bool = False
    window: bool = False  # a sliding window, bottom-right aligned
    gqa: bool = False  # 4 query heads per key/value head
    odd: bool = False  # lengths that are not multiples of 16
    tma: bool = True  # the copy-engine path where the architecture has it; False: the pointer path
    tile: tuple[int, int, int, int] = (0, 0, 0, 0)  # BLOCK_M, BLOCK_N, num_warps, num_stages
    part: int = 0  # bwd_dkdv above head dim 128: 1 the dV launch, 2 the dK one (`ops.dkdv_parts`)
    half: int = 0  # bwd_dq, a bwd_dkdv part: 1 or 2, the launch over that half of the head dim (0: all of it)

    @property
    def path(self) -> str:
        return "tma" if self.tma and self.arch >= 90 else "ptr"

    @property
    def loop_kernel(self) -> str:
        """The kernel's name for the loop profile's FLOP count (the dK/dV parts do different products)."""
        if self.kernel == "bwd_dkdv":
            return ("bwd_dkdv", "bwd_dv", "bwd_dk")[self.part] + ("_half" if self.half else "")
        return "bwd_dq_half" if self.kernel == "bwd_dq" and self.half else self.kernel

    def label(self) -> str:
        names = ("varlen", "causal", "window", "dropout", "gqa", "odd")
        flags = [f for f in names if getattr(self, f)] + (
            [["", "bool mask", "add mask"][self.mask]] if self.mask else []
        )
        m, n, w, s = self.tile
        return (
            f"{self.loop_kernel:<8} sm_{self.arch} {self.path:<3} {self.dtype:<8} d={self.head_dim:<3} {m}x{n} "
            f"w{w} s{s} {'+'.join(flags) or '-'}"
        )


def _example_launch(v: Variant):
    """The launch a real call makes for this variant, on CPU example tensors (as a layer lays them out)."""
    import torch

    from . import ops

    dtype = getattr(torch, v.dtype)
    B, H, D = 4, 16, v.head_dim
    Hk = H // 4 if v.gqa else H
    if v.kernel.startswith("decode"):
        return _example_decode_launch(v, B, H, Hk, D, dtype)
    L, S = (1000, 1003) if v.odd else (1024, 1024)
    gen = torch.Generator().manual_seed(0)
    seed = torch.zeros(1, dtype=torch.int64) if v.dropout else None
    if v.varlen:
        lengths = [300, 1024, 17, 683]
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        q = torch.randn(cu[-1].item(), H, D, generator=gen).to(dtype)  # (T, H, D)
        k, v_ = (torch.randn(cu[-1].item(), Hk, D, generator=gen).to(dtype) for _ in range(2))
        layout, mask = ops._Layout(q, k, cu, cu), None
    else:  # projections split into heads: (B, L, H, D) viewed as (B, H, L, D)
        q = torch.randn(B, L, H, D, generator=gen).to(dtype).transpose(1, 2)
        k, v_ = (torch.randn(B, S, Hk, D, generator=gen).to(dtype).transpose(1, 2) for _ in range(2))
        layout = ops._Layout(q, k)
        mask = None
        if v.mask == 1:
            mask = torch.rand(L, S, generator=gen) > 0.5
        elif v.mask == 2:
            mask = torch.randn(L, S, generator=gen).to(dtype)
    left, right = (255, 0) if v.window else (-1, 0 if v.causal else -1)
    options = (0.1 if v.dropout else 0.0, 1 / math.sqrt(D), left, right, v.window, v.dtype == "float32", layout)
    tma = v.tma and v.arch >= 90
    if v.kernel == "fwd":
        return ops.forward_launch(q, k, v_, mask, seed, *options, tma=tma)[0]
    out, lse = ops.forward_launch(q, k, v_, mask, seed, *options, tma=tma)[1:]
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    parts = {"attn_bwd_dkdv": ((v.part, v.half),), "attn_bwd_dq": (v.half,)}  # the variant's launch, table or not
    launches, *_ = ops.backward_launches(grad, q, k, v_, mask, seed, out, lse, *options, tma=tma, arch=v.arch,
                                         parts=parts)  # fmt: skip
    return next(
        launch for launch in launches
        if launch.kernel == KERNEL_NAMES[v.kernel]
        and (launch.kwargs.get("PART", 0), launch.kwargs.get("HALF", 0)) == (v.part, v.half)
    )  # fmt: skip


def _example_decode_launch(v: Variant, B: int, H: int, Hk: int, D: int, dtype):
    """A decoding step as `layers.CausalSelfAttention` makes it: one new token, queries ``(B, T, H, D)`` and a
    `layers.KVCache` ``(B, max_len, Hk, D)``, both seen head-first; lengths int64."""
    import torch

    from . import ops

    gen = torch.Generator().manual_seed(0)
    max_len = 1000 if v.odd else 4096
    q = torch.randn(B, 1, H, D, generator=gen).to(dtype).transpose(1, 2)
    k, v_ = (torch.randn(B, max_len, Hk, D, generator=gen).to(dtype).transpose(1, 2) for _ in range(2))
    lengths = torch.tensor([max_len, 17, 900, 1], dtype=torch.int64)
    launches, _ = ops.decode_launches(q, k, v_, lengths, 1 / math.sqrt(D), v.dtype == "float32")
    return launches[0 if v.kernel == "decode" else 1]


def with_parts(v: Variant) -> list[Variant]:
    """``v``, or its launches where the kernel runs in two (dK/dV in `ops.dkdv_parts`' cases: dV and dK; dQ in
    `tiles.dq_halves`' rows: one per half of the head dim), each a compile of its own."""
    import torch

    from .ops import dkdv_parts, dq_parts
    from .tiles import block_dim, halves_on_pointers, kind_of, split_kind

    if v.kernel not in ("bwd_dkdv", "bwd_dq"):
        return [v]
    kernel, dtype = KERNEL_NAMES[v.kernel], getattr(torch, v.dtype)
    kind = kind_of(kernel, dtype, v.mask, v.dropout, v.varlen, v.window, v.gqa)
    if v.kernel == "bwd_dkdv":
        split = split_kind(kernel, dtype, v.mask, v.dropout, v.varlen, v.window, v.gqa, block_dim(v.head_dim))
        pointers = halves_on_pointers(v.mask, v.dropout, v.varlen, v.window, v.gqa)
        parts = dkdv_parts(v.arch, v.head_dim, v.head_dim, kind, v.path == "tma", split, pointers)
        # the halves' launches on the pointer path where `halves_on_pointers` puts them, as `backward_launches` does
        return [dataclasses.replace(v, part=part, half=half, tma=v.tma and not (half and pointers))
                for part, half in parts]  # fmt: skip
    return [dataclasses.replace(v, half=half) for half in dq_parts(v.arch, v.path == "tma", v.head_dim, kind)]


def jit_specialisation(fn, args: tuple, kwargs: dict, arch: int):
    """``(options, signature, constexprs, attrs)`` as Triton's JIT computes them for a launch on ``sm_<arch>``."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kwargs = {**kwargs, "debug": kwargs.get("debug", fn.debug) or knobs.runtime.debug}
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode  # as JITFunction.run sets them
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):  # triton 3.9
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialisation, options = binder(*args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, specialisation, options)


def variant_call(v: Variant):
    """``(JITFunction, args, kwargs)`` of the variant's launch, the tile's meta-parameters included."""
    import triton

    from . import ops

    launch = _example_launch(v)
    fn = ops.KERNELS[launch.kernel]
    fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn  # the JITFunction behind the autotuner
    m, n, w, s = v.tile
    kwargs = dict(launch.kwargs)
    if v.kernel in ("fwd", "bwd_dkdv", "bwd_dq"):  # the autotuned kernels; the others' launch fixes its tile
        kwargs.update(BLOCK_M=m, BLOCK_N=n)
    return fn, launch.args, {**kwargs, "num_warps": w, "num_stages": s}


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) from the ptxas bundled with triton."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        done = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        os.unlink(f.name)
    text = done.stdout + done.stderr
    regs = max((int(r) for r in re.findall(r"Used (\d+) registers", text)), default=-1)
    spills = sum(int(s) for s in re.findall(r"(\d+) bytes spill stores", text))
    return regs, spills


def ctas_per_sm(arch: int, registers: int, shared: int, num_warps: int) -> int:
    """Programs resident per SM, limited by registers (allocated per warp in units of 256), shared memory, threads."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = 65_536 // (per_warp * num_warps) if registers > 0 else 32
    by_shared = SHARED_PER_SM[arch] // shared if shared else 32
    return max(0, min(by_regs, by_shared, 2048 // (32 * num_warps), 32))


def compile_variant(v: Variant) -> dict:
    """Compile one variant as the JIT would; its report, with ``ok`` False and the reasons where it fails."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .loop_profile import disassemble, warp_instructions_per_mflop

    m, n, w, s = v.tile
    report = {
        "variant": v.label(), **{k: val for k, val in dataclasses.asdict(v).items() if k not in ("tile", "tma")},
        "path": v.path, "block_m": m, "block_n": n, "num_warps": w, "num_stages": s,
    }  # fmt: skip
    fn, args, kwargs = variant_call(v)
    try:
        options, signature, constexprs, attrs = jit_specialisation(fn, args, kwargs, v.arch)
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", v.arch, 32), options=options.__dict__
        )
    except Exception as err:  # a compile error is this check's finding, reported rather than raised
        return {**report, "ok": False, "why": f"does not compile: {str(err).splitlines()[-1][:200]}"}
    ptx = compiled.asm["ptx"]
    regs, spills = _ptxas_report(ptx, v.arch)
    wgmma, mma = "wgmma.mma_async" in ptx, "mma.sync" in ptx
    instructions, per_mflop = warp_instructions_per_mflop(
        disassemble(compiled.asm["cubin"]), v.loop_kernel, m, n, v.head_dim, w
    )
    report.update(
        registers=regs, spill_bytes=spills, shared_bytes=compiled.metadata.shared,
        ctas_per_sm=ctas_per_sm(v.arch, regs, compiled.metadata.shared, w), wgmma=wgmma,
        tma="cp.async.bulk.tensor" in ptx, loop_instructions=instructions,
        loop_warp_instructions_per_mflop=None if per_mflop is None else round(per_mflop, 1),
    )  # fmt: skip
    problems = []
    if report["shared_bytes"] > SHARED_LIMIT[v.arch]:
        problems.append(f"shared memory {report['shared_bytes']} B > {SHARED_LIMIT[v.arch]} B")
    if spills:
        problems.append(f"spills {spills} B")
    if v.kernel not in NO_MATMUL:
        if not (wgmma or mma):
            problems.append("no mma/wgmma instructions")
        elif v.arch >= 90 and v.dtype != "float32" and not wgmma and not no_wgmma_tile(v):
            problems.append("no wgmma on sm_90")
        if v.path == "tma" and not report["tma"]:
            problems.append("the copy-engine path does not use cp.async.bulk.tensor")
    return {**report, "ok": not problems, "why": "; ".join(problems)}


def no_wgmma_tile(v: Variant) -> bool:
    """The exception to ``wgmma`` on sm_90: the decode kernel, whose 16-row tile (`DECODE_TILE`) is below
    ``wgmma``'s 64 rows. (dK/dV above head dim 128 with several features of extra state was one until 2026-11-28:
    its half-head-dim launches now take every combination a call makes, `tiles.halves_take`.)"""
    return v.kernel == "decode"


# The decode kernel's launch fixes its tile: the rows of one key/value head's new queries (at least 16, `tl.dot`'s
# minimum: too few for wgmma's 64, so mma.sync; the kernel is bound by reading the cache), 64 keys a step.
DECODE_TILE = (16, 64, 4, 2)
DECODE_COMBINE_TILE = (16, 0, 4, 1)
DECODE_VARIANTS = [  # one new token over a 4096-slot cache: dtypes, GQA (4 heads a key head) or not, odd head dims
    {"dtype": "float16", "gqa": True},
    {"dtype": "bfloat16", "head_dim": 64},
    {"dtype": "float32", "head_dim": 24, "odd": True, "gqa": True},
]


def kept(v: Variant) -> list[tuple[int, int, int, int]]:
    """The tiles the autotuner keeps for this variant on its architecture (the prune rule)."""
    from .tiles import block_dim, kept_tiles, kind_of, launch_features, split_kind, split_row, split_tiles

    if v.kernel == "bwd_pre":
        return [(0, 0, 4, 1)]
    if v.kernel.startswith("decode"):
        return [DECODE_TILE if v.kernel == "decode" else DECODE_COMBINE_TILE]
    import torch

    kernel, dtype = KERNEL_NAMES[v.kernel], getattr(torch, v.dtype)
    kind = kind_of(kernel, dtype, v.mask, v.dropout, v.varlen, v.window, v.gqa)
    if v.kernel == "bwd_dkdv" and v.part and kind == "tile":  # a split launch with extra state: its own row
        one = split_kind(kernel, dtype, v.mask, v.dropout, v.varlen, v.window, v.gqa, block_dim(v.head_dim))
        split = split_row(one, v.half)
        return split_tiles(v.arch, v.path == "tma", block_dim(v.head_dim), split)
    live = launch_features(kernel, v.mask, v.dropout, v.varlen, v.window, v.gqa)
    return kept_tiles(kernel, v.arch, v.path == "tma", block_dim(v.head_dim), kind, live)


# The covering set: each change from the main variant (fp16, d=128, no mask, dense, aligned) turns on several
# constexpr values or argument shapes at once; together they reach every value and head-dim bucket.
COVERING = [
    {"head_dim": 64},
    {"causal": True},
    {"mask": 1, "dropout": True},  # (no call has a mask and is_causal: validation refuses them together)
    {"mask": 2, "dropout": True, "gqa": True},  # dK/dV on sm_90: dV and dK apart (`tiles.groups_split`)
    {"varlen": True, "window": True, "dropout": True, "gqa": True},  # a Gemma-2-like training step, likewise
    {"window": True, "dropout": True},
    {"dtype": "bfloat16", "head_dim": 192, "causal": True},
    {"dtype": "float32", "head_dim": 80, "gqa": True},
    {"varlen": True, "causal": True, "dropout": True, "head_dim": 64},  # a narrowed row (`tiles.narrow_kind`)
    {"varlen": True},  # narrowed rows at head dim 128: variable length alone, dropout alone
    {"dropout": True, "causal": True},
    {"varlen": True, "gqa": True, "window": True},
    {"head_dim": 16, "odd": True, "tma": False},
    {"head_dim": 24, "odd": True},
    {"head_dim": 256, "dtype": "bfloat16", "mask": 1},  # dK/dV: one feature live, the split launches
    {"head_dim": 256, "varlen": True, "window": True, "gqa": True},  # dK/dV: several features, the halves
    {"head_dim": 256, "dropout": True, "gqa": True},  # dK/dV: the halves on pointers (`tiles.halves_on_pointers`)
]


def variants(full: bool, archs: tuple[int, ...]) -> list[Variant]:
    out = []
    for arch in archs:
        out += [Variant("bwd_pre", arch, dtype, tile=(0, 0, 4, 1)) for dtype in DTYPES]
        for change in DECODE_VARIANTS:  # pointers only: the cache is read through its lengths
            out += [Variant(kernel, arch, **change, tma=False, tile=kept(Variant(kernel, arch))[0])
                    for kernel in ("decode", "decode_combine")]  # fmt: skip
        for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
            if full:
                grid = itertools.product(DTYPES, HEAD_DIMS, (False, True), (0, 1, 2), (False, True), (False, True))
                names = ("dtype", "head_dim", "causal", "mask", "dropout", "varlen")
                for values in grid:
                    flags = dict(zip(names, values, strict=True))
                    if flags["varlen"] and flags["mask"]:
                        continue  # the variable-length mode takes no mask
                    for part in with_parts(Variant(kernel, arch, **flags)):  # a split launch keeps its own tiles
                        out += [dataclasses.replace(part, tile=t) for t in kept(part)]
                continue
            for main in (Variant(kernel, arch), Variant(kernel, arch, head_dim=64)):
                out += [dataclasses.replace(main, tile=t) for t in kept(main)]  # every kept tile
            for change in COVERING[1:]:
                for part in with_parts(Variant(kernel, arch, **change)):
                    out.append(dataclasses.replace(part, tile=kept(part)[0]))
    return list(dict.fromkeys(part for v in out for part in with_parts(v)))


# What each SPILL_FREE kind must survive: a tile is kept for a kind when every one of these compiles spill-free
# (register allocation is not monotone in the features, so the "tile" kinds are checked with several combinations).
# Since 2026-11-28 the combinations calls make (no mask with is_causal or a window); the "tile" and "fp32-tile"
# rows in `spill_free` were re-measured with them the same day (rows where no tile passes keep their former tiles).
_TILE_STATE = [
    {"mask": 1, "dropout": True, "gqa": True},
    {"mask": 2, "dropout": True, "gqa": True},
    {"window": True, "dropout": True, "gqa": True},
    {"varlen": True, "dropout": True, "causal": True},
    {"varlen": True, "dropout": True, "window": True, "gqa": True},
    # two the covering set found spilling at tiles the five above kept (register allocation is not monotone in the
    # features): dK/dV's one launch at d=128 with a bool mask and dropout (no grouped heads: with them it runs as two
    # launches) under 3.6, dQ on sm_80 with packed sequences, a window and grouped heads (no dropout) under 3.9
    {"mask": 1, "dropout": True},
    {"varlen": True, "window": True, "gqa": True},
]
MEASURED_KINDS = {
    "plain": [{}, {"causal": True}],
    "tile": _TILE_STATE,
    "fp32": [{"dtype": "float32"}, {"dtype": "float32", "causal": True}],
    "fp32-tile": [{"dtype": "float32", **flags} for flags in _TILE_STATE],
    # one feature live (`tiles.split_kind`): rows of dK/dV's dV and dK launches above head dim 128 on sm_90 only
    "tile-bool": [{"mask": 1}, {"mask": 1, "causal": True}],
    "tile-additive": [{"mask": 2}, {"mask": 2, "causal": True}],
    "tile-dropout": [{"dropout": True}, {"dropout": True, "causal": True}],
    "tile-varlen": [{"varlen": True}, {"varlen": True, "causal": True}],
    "tile-window": [{"window": True}],
    "tile-gqa": [{"gqa": True}, {"gqa": True, "causal": True}],
    # several features live (`tiles.halves_take`): dV's and dK's launches over half the head dim; every pair and
    # the triples calls make (no mask with a window or variable length), and the one features whose own row is
    # empty under some version (they run these launches); those with grouped heads and a mask or dropout on the
    # pointer path only (`tiles.halves_on_pointers`)
    "tile-halves": [
        {"mask": 1, "dropout": True, "causal": True},
        {"mask": 2, "dropout": True},
        {"varlen": True, "dropout": True, "causal": True},
        {"varlen": True, "window": True},
        {"varlen": True, "gqa": True, "causal": True},
        {"dropout": True, "window": True},
        {"window": True, "gqa": True},
        {"varlen": True, "window": True, "gqa": True, "causal": True},
        {"varlen": True, "dropout": True, "window": True, "causal": True},
        {"gqa": True, "causal": True},
        {"dropout": True, "causal": True},
        {"mask": 2},
        {"mask": 1, "gqa": True},
        {"mask": 2, "gqa": True, "causal": True},
        {"dropout": True, "gqa": True, "causal": True},
        {"mask": 1, "dropout": True, "gqa": True},
        {"mask": 2, "dropout": True, "gqa": True},
        {"dropout": True, "window": True, "gqa": True},
        {"varlen": True, "dropout": True, "gqa": True},
        {"varlen": True, "dropout": True, "window": True, "gqa": True},
    ],
    # the "tile" kind narrowed to one common feature set at head dims up to 128 (`tiles.narrow_kind`): one launch
    "tile:varlen": [{"varlen": True}, {"varlen": True, "causal": True}],
    "tile:dropout": [{"dropout": True}, {"dropout": True, "causal": True}],
    "tile:dropout+varlen": [{"varlen": True, "dropout": True}, {"varlen": True, "dropout": True, "causal": True}],
    # grouped heads with a mask or dropout at head dim 128 (`tiles.groups_split`): dV's and dK's launches
    "tile-gqa-128": [
        {"mask": 1, "gqa": True},
        {"mask": 2, "gqa": True},
        {"mask": 2, "gqa": True, "causal": True},
        {"dropout": True, "gqa": True},
        {"dropout": True, "gqa": True, "causal": True},
        {"mask": 1, "dropout": True, "gqa": True},
        {"mask": 2, "dropout": True, "gqa": True},
        {"window": True, "dropout": True, "gqa": True},
        {"varlen": True, "dropout": True, "gqa": True, "causal": True},
        {"varlen": True, "dropout": True, "window": True, "gqa": True},
    ],
}


def measure_tiles(
    archs: tuple[int, ...], jobs: int, keep: int = 3, kernels: tuple[str, ...] = ("fwd", "bwd_dkdv", "bwd_dq"),
    buckets: tuple[int, ...] = (64, 128, 256), kinds: tuple[str, ...] = tuple(MEASURED_KINDS),
    among: dict | None = None,
) -> dict:  # fmt: skip
    """Per (arch, path, head-dim bucket, kind) row, the first ``keep`` tiles (in CONFIGS order) whose launches all
    compile spill-free in each of the kind's feature combinations (`MEASURED_KINDS`). ``kernels``, ``buckets`` and
    ``kinds`` narrow it to the rows a change affects; ``among`` (a table, e.g. another triton's with every passing
    tile: ``keep`` 13) to the tiles it lists per row, which gives the tiles both versions keep (`spill_free`).

    A row stops at its ``keep``-th passing tile and a tile at its first failing launch: the same table as compiling
    every tile (rows are independent, tiles are taken in order), in a fraction of the compiles (rows run in
    parallel processes, each row's compiles in order)."""
    from .tiles import CONFIGS, GROUPS_KIND, halves_on_pointers

    rows: dict[tuple, dict[tuple, list[Variant]]] = {}  # (kernel, row) -> tile -> its launches, in CONFIGS order
    for arch, kernel, bucket, kind in itertools.product(archs, kernels, buckets, kinds):
        one = kind.startswith("tile-")  # a split kind: the split's launches, whatever the table says
        small = kind == GROUPS_KIND  # the one split kind at head dim 128
        if one and not (arch >= 90 and kernel == "bwd_dkdv" and (bucket == 128 if small else bucket > 128)):
            continue
        if kind.startswith("tile:") and bucket > 128:  # narrowed rows: head dims up to 128 (`tiles.narrow_kind`)
            continue
        combos = MEASURED_KINDS[kind]
        for tma in (True, False) if arch >= 90 else (False,):
            for tile in CONFIGS[KERNEL_NAMES[kernel]]:
                if one and tile[1] < 64:  # wgmma needs 64 key rows: such a tile fails a split row's check anyway
                    continue
                for flags in combos:
                    v = Variant(kernel, arch, head_dim=bucket, tma=tma, tile=tile, **flags)
                    if tma and kind == "tile-halves" and halves_on_pointers(v.mask, v.dropout, v.varlen, v.window,
                                                                            v.gqa):  # fmt: skip
                        continue  # these halves never run on the copy-engine path
                    halves = (1, 2) if kind == "tile-halves" else (0,)
                    launches = [dataclasses.replace(v, part=p, half=h) for p in (1, 2) for h in halves]
                    for part in launches if one else with_parts(v):
                        row = (KERNEL_NAMES[kernel], (arch, part.path, bucket, kind))
                        rows.setdefault(row, {}).setdefault(tile, []).append(part)
    if among is not None:  # a row's tiles that the other table lists for it
        rows = {row: {t: v for t, v in by_tile.items() if t in among.get(row[0], {}).get(row[1], ())}
                for row, by_tile in rows.items()}  # fmt: skip
    tasks = [(row, list(by_tile.values()), keep) for row, by_tile in rows.items()]
    found = _in_processes(_first_passing, tasks, jobs, "rows")
    table: dict = {}
    for (kernel, row), tiles in zip(rows, found, strict=True):
        table.setdefault(kernel, {})[row] = tiles
    return table


def read_table(path: str) -> dict:
    """The table a ``--measure-tiles`` run printed (its ``TABLE: Table = {...}`` literal)."""
    import ast
    import pathlib

    text = pathlib.Path(path).read_text()
    return ast.literal_eval(text[text.index("= {") + 2 :])


def _first_passing(task: tuple) -> list[tuple[int, int, int, int]]:
    """One row of `measure_tiles`: the first ``keep`` tiles whose launches all compile spill-free."""
    _, launches_per_tile, keep = task
    passed = []
    for launches in launches_per_tile:
        if all(compile_variant(v)["ok"] for v in launches):  # all() stops at the first failure
            passed.append(launches[0].tile)
            if len(passed) == keep:
                break
    return passed


def _compile_all(todo: list[Variant], jobs: int) -> list[dict]:
    return _in_processes(compile_variant, todo, jobs, "variants")


def _in_processes(fn, items: list, jobs: int, unit: str) -> list:
    """``[fn(x) for x in items]`` in ``jobs`` processes (here, for one), in order, with a progress bar where tqdm is
    installed."""
    if jobs == 1:
        return [fn(x) for x in _progress(items, unit)]
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        return list(_progress(pool.map(fn, items), unit, len(items)))


def _progress(done, unit: str, total: int | None = None):
    try:  # the examples' extra installs tqdm; the GPU image has it
        from tqdm import tqdm
    except ImportError:
        return done
    return tqdm(done, total=total, desc="compiling", unit=unit.rstrip("s"), file=sys.stderr)


def format_report(reports: list[dict]) -> str:
    lines = [f"{'variant':<70} {'shared B':>9} {'regs':>5} {'spill':>5} {'CTA/SM':>6} {'wgmma':>5} {'tma':>4} "
             f"{'loop':>5} {'instr/MFLOP':>11}  result"]  # fmt: skip
    for r in reports:
        if "registers" not in r:
            lines.append(f"{r['variant']:<70} FAIL: {r['why']}")
            continue
        per = r["loop_warp_instructions_per_mflop"]
        lines.append(
            f"{r['variant']:<70} {r['shared_bytes']:>9} {r['registers']:>5} {r['spill_bytes']:>5} "
            f"{r['ctas_per_sm']:>6} {'yes' if r['wgmma'] else '-':>5} {'yes' if r['tma'] else '-':>4} "
            f"{r['loop_instructions'] or '-':>5} {per if per is not None else '-':>11}  "
            f"{'ok' if r['ok'] else 'FAIL: ' + r['why']}"
        )
    return "\n".join(lines)


def goals(reports: list[dict]) -> list[str]:
    """The loop-profile goals against the best kept tile of each main sm_90 variant (lines for the summary)."""
    lines = []
    for (kernel, head_dim), goal in LOOP_GOALS.items():
        for causal in (False, True) if kernel == "fwd" else (False,):
            best = next(
                (r for r in reports if r["kernel"] == kernel and r["arch"] == 90 and r["head_dim"] == head_dim
                 and r["dtype"] == "float16" and r["causal"] == causal and not r["mask"] and not r["dropout"]
                 and not r["varlen"] and not r["window"] and not r["gqa"] and not r["odd"] and r["path"] == "tma"
                 and "registers" in r),
                None,
            )  # fmt: skip
            if best is None:
                continue
            value = best["loop_warp_instructions_per_mflop"]
            verdict = "met" if value is not None and value <= goal else "NOT met"
            lines.append(
                f"{kernel} d={head_dim}{' causal' if causal else ''} {best['block_m']}x{best['block_n']}: "
                f"{value} warp-instructions/MFLOP (goal <= {goal}: {verdict})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole cross product (hours)")
    parser.add_argument(
        "--measure-tiles",
        action="store_true",
        help="compile the tiles of every kind's rows in its feature combinations, in order, until --keep pass, and "
        "print the spill-free table for the installed triton (the 'tile' and 'fp32-tile' rows with --keep 13: 49 "
        "minutes on 2 cores under triton 3.9; --among them under 3.6: 16 minutes)",
    )
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    main_kernels = ["fwd", "bwd_dkdv", "bwd_dq"]
    parser.add_argument(
        "--kernel",
        nargs="+",
        default=main_kernels,
        choices=main_kernels,
        help="--measure-tiles: only these kernels' rows",
    )
    parser.add_argument(
        "--head-dim-bucket",
        type=int,
        nargs="+",
        default=[64, 128, 256],
        choices=[64, 128, 256],
        help="--measure-tiles: only these padded head dims' rows",
    )
    parser.add_argument(
        "--kind",
        nargs="+",
        default=list(MEASURED_KINDS),
        choices=list(MEASURED_KINDS),
        help="--measure-tiles: only these kinds' rows",
    )
    parser.add_argument(
        "--keep", type=int, default=3, help="--measure-tiles: tiles kept per row (13: every passing one)"
    )
    parser.add_argument(
        "--among",
        help="--measure-tiles: only the tiles this file's table (another run's output) lists per row: run under "
        "triton 3.6 among 3.9's every passing tile (--keep 13) for the rows both versions keep",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write one record per compiled variant to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice about the default
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels.compile_check needs real kernels: run it without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import triton

    if args.measure_tiles:
        among = None if args.among is None else read_table(args.among)
        table = measure_tiles(
            tuple(args.arch), args.jobs, args.keep, tuple(args.kernel), tuple(args.head_dim_bucket),
            tuple(args.kind), among,
        )  # fmt: skip
        print(f"# triton {triton.__version__}: paste into kernels/triton/spill_free.py\nTABLE: Table = {{")
        for kernel, rows in table.items():
            print(f"    {kernel!r}: {{")
            for key, tiles in sorted(rows.items()):
                print(f"        {key!r}: {tiles!r},")
            print("    },")
        print("}")
        return 0
    todo = variants(args.full, tuple(args.arch))
    print(f"triton {triton.__version__}: compiling {len(todo)} kernel variants for "
          f"{', '.join(f'sm_{a}' for a in args.arch)} as the JIT compiles them ({args.jobs} jobs)")  # fmt: skip
    reports = _compile_all(todo, args.jobs)
    print(format_report(reports))
    failed = [r for r in reports if not r["ok"]]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    print("\nhot-loop profile (a static proxy, not a speed claim):")
    print("\n".join("  " + line for line in goals(reports)) or "  no sm_90 main variant compiled")
    print(f"\n{len(reports) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
