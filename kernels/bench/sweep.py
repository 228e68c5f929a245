"""The kernel benchmark proper: ``python -m kernels.bench --sweep``.

TRITON against each of torch's SDPA kernels (flash, efficient, cuDNN, math, forced one at a time) in one run,
over forward, backward and forward + backward, causal or not, float16 and bfloat16, head dims 64 and 128, and
sequence lengths from 512 to 16k at a constant number of tokens per batch (batch = tokens / length).
Throughput in TFLOP/s from `attention_flops` (forward: 4 * B * H * L * S * D, halved when causal; backward 2.5x
the forward, forward + backward 3.5x: the backward pass does five matrix products to the forward's two).

A combination a kernel cannot run is listed with its reason. Without a GPU the default sizes are small
(it runs what it can: torch's CPU kernels) and TRITON is reported as skipped unless interpreted.
Output: a table per pass, a JSON file and a PNG of TFLOP/s against sequence length.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend
from tqdm import tqdm

from ..backends import Backend, NoBackendAvailableError
from ..sdpa import scaled_dot_product_attention
from .common import attention_flops, first_reasons, only, torch_refusal
from .timing import line_charts, median_seconds

PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "TRITON": lambda: only(Backend.TRITON),
    "torch flash": lambda: only(Backend.TORCH, torch_kernel=SDPBackend.FLASH_ATTENTION),
    "torch efficient": lambda: only(Backend.TORCH, torch_kernel=SDPBackend.EFFICIENT_ATTENTION),
    "torch cuDNN": lambda: only(Backend.TORCH, torch_kernel=SDPBackend.CUDNN_ATTENTION),
    "torch math": lambda: only(Backend.TORCH, torch_kernel=SDPBackend.MATH),
}


@dataclasses.dataclass
class Point:
    variant: str
    step: str
    dtype: str
    head_dim: int
    causal: bool
    seq_len: int
    batch: int
    ms: float | None = None  # median over the rounds
    tflops: float | None = None
    spread: float | None = None  # (slowest round - fastest round) / median
    vs_best_torch: float | None = None  # this variant's time / the fastest torch kernel's, same shape
    skipped: str | None = None


def _call(step: str, q, k, v, causal: bool):
    """One timed call of ``step``; the forward of a backward-only timing runs once, outside the timing."""
    if step == "fwd":
        return lambda: scaled_dot_product_attention(q, k, v, is_causal=causal)
    if step == "fwd+bwd":

        def fwd_bwd():
            out = scaled_dot_product_attention(q, k, v, is_causal=causal)
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

        return fwd_bwd
    out = scaled_dot_product_attention(q, k, v, is_causal=causal)
    grad = torch.ones_like(out)
    return lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)


def measure_shape(args: argparse.Namespace, step: str, dtype: str, head_dim: int, causal: bool, seq_len: int):
    """Every variant on one shape, interleaved: ``--rounds`` rounds, each timing every variant once in turn."""
    batch = max(1, args.tokens // seq_len)
    shape = (batch, args.heads, seq_len, head_dim)  # (B, H, L, D)
    gen = torch.Generator(device=args.device).manual_seed(0)
    q, k, v = (
        torch.randn(shape, device=args.device, dtype=getattr(torch, dtype), generator=gen, requires_grad=step != "fwd")
        for _ in range(3)
    )
    points = {name: Point(name, step, dtype, head_dim, causal, seq_len, batch) for name in args.variants}
    calls = {}
    for name in args.variants:
        try:
            with VARIANTS[name]():
                call = _call(step, q, k, v, causal)
                call()  # feasibility (and the autotuner's choice) before any timing
            calls[name] = call
        except NoBackendAvailableError as err:
            points[name].skipped = first_reasons(str(err))
        except RuntimeError as err:  # torch refusing one of its kernels for this input
            points[name].skipped = torch_refusal(err, torch.device(args.device))
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            with VARIANTS[name]():
                rounds[name].append(median_seconds(call, args.min_run_time))
    flops = attention_flops(batch, args.heads, seq_len, seq_len, head_dim, causal) * PASS_FACTOR[step]
    for name, times in rounds.items():
        seconds = statistics.median(times)
        points[name].ms, points[name].tflops = seconds * 1e3, flops / seconds / 1e12
        points[name].spread = (max(times) - min(times)) / seconds
    torch_best = min((p.ms for p in points.values() if p.ms and p.variant.startswith("torch")), default=None)
    for p in points.values():
        if p.ms and torch_best:
            p.vs_best_torch = p.ms / torch_best
    return list(points.values())


def run(args: argparse.Namespace, on_progress=None) -> list[Point]:
    """Every shape of the grid; past ``--time-budget`` seconds the remaining shapes are listed as skipped.
    ``on_progress(points)`` is called after each shape (the JSON is rewritten, so a killed run keeps its data)."""
    # In the order the arguments give (the first dtype, head dim and length first), each shape's passes together: a
    # run cut short by its time budget has measured the shapes that were asked for first.
    grid = list(itertools.product(args.dtypes, args.head_dims, args.seq_lens, (False, True), args.steps))
    points: list[Point] = []
    started = time.monotonic()
    for dtype, head_dim, seq_len, causal, step in tqdm(grid, desc="sweep", unit="shape", file=sys.stderr):
        if args.time_budget and time.monotonic() - started > args.time_budget:
            why = f"time budget spent (--time-budget {args.time_budget:g} s)"
            batch = max(1, args.tokens // seq_len)
            points += [Point(v, step, dtype, head_dim, causal, seq_len, batch, skipped=why) for v in args.variants]
            continue
        points += measure_shape(args, step, dtype, head_dim, causal, seq_len)
        if on_progress is not None:
            on_progress(points)
    return points


def format_tables(points: list[Point], args: argparse.Namespace) -> str:
    lines = [
        f"Attention kernels on {args.device}: TFLOP/s (median of {args.rounds} interleaved round(s); +-spread), "
        f"{args.tokens} tokens per batch, {args.heads} heads; 'x torch' = time / the fastest torch kernel's"
    ]
    for step in args.steps:
        lines += [
            "",
            f"{step}:",
            f"{'dtype':<9} {'D':>4} {'causal':>6} {'L':>6} " + "".join(f"{v:>19}" for v in args.variants)
            + f"{'TRITON x torch':>16}",
        ]  # fmt: skip
        keys = sorted({(p.dtype, p.head_dim, p.causal, p.seq_len) for p in points if p.step == step})
        for dtype, d, causal, length in keys:
            row = {
                p.variant: p
                for p in points
                if (p.step, p.dtype, p.head_dim, p.causal, p.seq_len) == (step, dtype, d, causal, length)
            }
            cells = "".join(
                f"{row[v].tflops:>12.4g} +-{100 * row[v].spread:>3.0f}%" if row[v].tflops is not None else f"{'-':>19}"
                for v in args.variants
            )
            ratio = row.get("TRITON").vs_best_torch if "TRITON" in row else None
            lines.append(f"{dtype:<9} {d:>4} {causal!s:>6} {length:>6} {cells}{ratio or '-':>16.4}")
    reasons = sorted({(p.variant, p.skipped) for p in points if p.skipped})
    if reasons:
        lines += ["", "skipped:"] + [f"  {variant}: {why}" for variant, why in reasons]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m kernels.bench --sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16", "float32"]
    )
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument(
        "--seq-lens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384] if cuda else [128, 256]
    )
    parser.add_argument("--tokens", type=int, default=16384 if cuda else 512, help="batch x length, kept constant")
    parser.add_argument("--heads", type=int, default=16 if cuda else 2)
    parser.add_argument("--steps", nargs="+", default=list(PASS_FACTOR), choices=list(PASS_FACTOR))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--min-run-time", type=float, default=0.5 if cuda else 0.1, help="seconds per timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per shape (median and spread)")
    parser.add_argument("--time-budget", type=float, default=0, help="stop measuring after this many seconds (0: none)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Point]:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out_dir / "kernels_sweep.json", args.out_dir / "kernels_sweep.png"
    config = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    date = datetime.date.today().isoformat()  # kernels.preferences cites it next to each measured ratio

    def write(points: list[Point]) -> None:
        payload = {
            "config": config,
            "torch": torch.__version__,
            "device": device,
            "date": date,
            "points": [dataclasses.asdict(p) for p in points],
        }
        json_path.write_text(json.dumps(payload, indent=2))

    points = run(args, on_progress=write)
    write(points)
    panels = {}
    for p in points:
        panel = f"{p.step}, {p.dtype}, D={p.head_dim}{', causal' if p.causal else ''}"
        if p.tflops:  # a shape the time budget skipped draws no empty panel
            panels.setdefault(panel, {}).setdefault(p.variant, []).append((p.seq_len, p.tflops))
    plotted = line_charts(png_path, f"Attention kernels on {args.device}: TFLOP/s vs sequence length", panels)
    print(format_tables(points, args))
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return points
