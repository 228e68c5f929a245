"""Offline compile check of the fused kernels for sm_80 and sm_90, without a GPU: ``python -m kernels.compile_check``.

Each kernel variant (causal, mask kind, dropout, dtype, head dim, tile config) is compiled with
``triton.compile`` for a GPU target; ``ptxas -v`` (bundled with triton) reports its registers and spills.
A variant fails when it does not compile, needs more shared memory than the architecture has, spills
registers, or (for the kernels built on matrix products) uses neither ``mma`` (sm_80) nor ``wgmma`` (sm_90).
The default is a covering set: every constexpr value and every head dim at least once, every autotune
config for each kernel's main variant, both architectures. ``--full`` compiles the whole cross product
(hours on 2 cores: for whoever changes the kernels). Exits non-zero when any variant fails.

It must run in a process without ``TRITON_INTERPRET`` (the kernels must be real ``JITFunction``s).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

SHARED_LIMIT = {80: 166_912, 90: 232_448}  # bytes of shared memory per block (TRITON-NOTES.md)
DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
HEAD_DIMS = (16, 64, 80, 128, 192, 256)
MAIN = {"dtype": "float16", "head_dim": 64, "causal": False, "mask": 0, "dropout": False}


@dataclasses.dataclass(frozen=True)
class Variant:
    kernel: str
    arch: int
    dtype: str
    head_dim: int
    causal: bool
    mask: int  # 0 none, 1 bool, 2 additive
    dropout: bool
    tile: tuple[int, int, int, int]  # BLOCK_M, BLOCK_N, num_warps, num_stages
    varlen: bool = False  # packed sequences with cu_seqlens offsets

    def label(self) -> str:
        flags = [f for f, on in (("varlen", self.varlen), ("causal", self.causal), ("dropout", self.dropout)) if on]
        flags += [["", "bool mask", "additive mask"][self.mask]] if self.mask else []
        m, n, w, s = self.tile
        return (
            f"{self.kernel:<9} sm_{self.arch} {self.dtype:<8} d={self.head_dim:<3} {m}x{n} w{w} s{s} "
            f"{'+'.join(flags) or '-'}"
        )


def _kernels():
    from .triton_bwd import attn_bwd_dkdv, attn_bwd_dq, attn_bwd_preprocess
    from .triton_fwd import attn_fwd

    return {"fwd": attn_fwd, "bwd_dkdv": attn_bwd_dkdv, "bwd_dq": attn_bwd_dq, "bwd_pre": attn_bwd_preprocess}


def _signature(fn, v: Variant, constexprs: dict) -> dict[str, str]:
    data = "*" + DTYPES[v.dtype]
    pointers = {
        "Lse": "*fp32", "Delta": "*fp32", "Seed": "*i64", "Mask": "*u8" if v.mask == 1 else data,
        "CuQ": "*i32", "CuK": "*i32",
    }  # fmt: skip
    floats = {"sm_scale", "dropout_p"}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name[0].isupper() and name not in ("H", "GROUP", "L", "S", "D", "DV", "TQ", "TK"):
            signature[name] = data
        else:
            signature[name] = "fp32" if name in floats else "i32"
    return signature


def _constexprs(v: Variant) -> dict:
    from .triton_ops import PREPROCESS_BLOCK, _block

    block_m, block_n, _, _ = v.tile
    if v.kernel == "bwd_pre":
        return {"BLOCK_M": PREPROCESS_BLOCK, "BLOCK_DV": _block(v.head_dim)}
    return {
        "IS_CAUSAL": v.causal, "MASK_KIND": v.mask, "HAS_DROPOUT": v.dropout, "ALLOW_TF32": v.dtype == "float32",
        "VARLEN": v.varlen,
        "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": _block(v.head_dim), "BLOCK_DV": _block(v.head_dim),
    }  # fmt: skip


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


def compile_variant(v: Variant) -> dict:
    """Compile one variant; returns its report (``ok`` False with the reason when it fails)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernels()[v.kernel]
    constexprs = _constexprs(v)
    report = {"variant": v.label(), **dataclasses.asdict(v)}
    try:
        compiled = triton.compile(
            ASTSource(fn, _signature(fn, v, constexprs), constexprs),
            target=GPUTarget("cuda", v.arch, 32),
            options={"num_warps": v.tile[2], "num_stages": v.tile[3]},
        )
    except Exception as err:  # a compile error is this check's finding, reported rather than raised
        return {**report, "ok": False, "why": f"does not compile: {str(err).splitlines()[-1][:200]}"}
    ptx = compiled.asm["ptx"]
    regs, spills = _ptxas_report(ptx, v.arch)
    mma = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "none"
    report.update(shared=compiled.metadata.shared, registers=regs, spills=spills, mma=mma)
    problems = []
    if report["shared"] > SHARED_LIMIT[v.arch]:
        problems.append(f"shared memory {report['shared']} B > {SHARED_LIMIT[v.arch]} B")
    if spills:
        problems.append(f"spills {spills} B")
    if mma == "none" and v.kernel != "bwd_pre":
        problems.append("no mma/wgmma instructions")
    return {**report, "ok": not problems, "why": "; ".join(problems)}


def variants(full: bool, archs: tuple[int, ...]) -> list[Variant]:
    from .triton_ops import CONFIGS, _block, prune_for

    def tiles(kernel: str, varlen: bool = False, **flags) -> list[tuple[int, int, int, int]]:
        """The configs the autotuner keeps for this variant (after the prune rule)."""
        import triton

        block = _block(flags["head_dim"])
        candidates = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in CONFIGS]
        import torch

        args = {"BLOCK_D": block, "BLOCK_DV": block, "HAS_DROPOUT": flags["dropout"], "MASK_KIND": flags["mask"],
                "VARLEN": varlen, "Q": torch.empty(0, dtype=getattr(torch, flags["dtype"]))}  # fmt: skip
        name = {"fwd": "attn_fwd", "bwd_dkdv": "attn_bwd_dkdv", "bwd_dq": "attn_bwd_dq"}[kernel]
        kept = prune_for(name)(candidates, args)
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]

    out = []
    for arch in archs:
        for dtype in DTYPES:
            out.append(Variant("bwd_pre", arch, dtype, 64, False, 0, False, (32, 32, 4, 1)))
        for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
            if full:
                grid = itertools.product(DTYPES, HEAD_DIMS, (False, True), (0, 1, 2), (False, True))
                combos = [dict(zip(("dtype", "head_dim", "causal", "mask", "dropout"), c, strict=True)) for c in grid]
                for flags in combos:
                    out += [Variant(kernel, arch, tile=t, **flags) for t in tiles(kernel, **flags)]
                continue
            out += [Variant(kernel, arch, tile=t, **MAIN) for t in tiles(kernel, **MAIN)]  # every config
            others = [{"causal": True}, {"mask": 1}, {"mask": 2}, {"dropout": True, "mask": 1, "causal": True},
                      {"dtype": "bfloat16", "head_dim": 128}, {"dtype": "float32"}]  # fmt: skip
            others += [{"head_dim": d} for d in HEAD_DIMS if d != MAIN["head_dim"]]
            others += [
                {"head_dim": 256, "mask": 1, "dropout": True},
                {"head_dim": 256, "dtype": "bfloat16", "causal": True},
            ]
            for change in others:
                flags = {**MAIN, **change}
                out.append(Variant(kernel, arch, tile=tiles(kernel, **flags)[0], **flags))
            for change in ({}, {"causal": True, "dropout": True}, {"head_dim": 128, "dtype": "bfloat16"}):
                flags = {**MAIN, **change}  # the variable-length mode: no mask, offsets from cu_seqlens
                out += [Variant(kernel, arch, tile=t, varlen=True, **flags) for t in tiles(kernel, True, **flags)[:1]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole cross product (hours)")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the reports to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice about the default
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels.compile_check needs real kernels: run it without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    todo = variants(args.full, tuple(args.arch))
    print(f"compiling {len(todo)} kernel variants for {', '.join(f'sm_{a}' for a in args.arch)} ({args.jobs} jobs)")
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(compile_variant, todo))
    print(f"\n{'variant':<62} {'shared B':>9} {'regs':>5} {'spills':>7} {'mma':>6}  result")
    for r in reports:
        numbers = (
            f"{r.get('shared', '-'):>9} {r.get('registers', '-'):>5} {r.get('spills', '-'):>7} {r.get('mma', '-'):>6}"
        )
        print(f"{r['variant']:<62} {numbers}  {'ok' if r['ok'] else 'FAIL: ' + r['why']}")
    failed = [r for r in reports if not r["ok"]]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    print(f"\n{len(reports) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
