"""Benchmark of the attention backends: ``python -m kernels.bench``.

Experiments, each timing every variant on one input in the same run (and ``--sweep``, the kernel
benchmark over passes, dtypes, head dims and lengths: `kernels.bench.sweep`):

- dense (default): the experiment of PyTorch's SDPA tutorial (default / math / flash / efficient on batch
  32, heads 32, length 1024, head dim 32, fp16), done through this package's dispatcher: every
  ``kernels.Backend``, and torch's own kernels forced one at a time through ``Backend.TORCH``.
- ``--nested``: a batch of lengths spread evenly up to the maximum (~50% padding), trained
  (forward + backward): ``Backend.TRITON`` varlen and ``Backend.TORCH`` on the nested tensor, torch's own nested
  SDPA, ``Backend.TORCH`` on the padded dense batch with a key padding mask, torch's ``varlen_attn`` where the
  installed torch has it (CUDA), and a dense batch of as many real tokens without padding. Throughput counts real
  tokens only.
- ``--window W``: causal attention over a sliding window of ``W`` keys against full causal attention at the same
  length (default L = 4096 on CPU), on ``TORCH`` (chunked) and ``TRITON`` (blocks outside the window skipped).
- ``--tiles KERNEL``: one fused kernel with each tile of its autotune list forced, against the autotuner's choice
  (`kernels.bench.tile_ab`; a GPU measurement).
- ``--halves W``: dK/dV above head dim 128 with grouped heads and a causal window of ``W`` keys, in the half-head-dim
  launches the spill table chooses against one launch (`kernels.bench.halves_ab`; a GPU measurement);
  ``--halves-dropout P`` adds attention dropout (the halves then load through pointers).

On a machine without a GPU the default sizes are scaled down and the dtype is float32. A variant that
cannot serve the input is listed with its reason instead of a time. Variants are timed in interleaved rounds
(``--rounds``): the table shows the median, the spread over the rounds, the ratio to the fastest and the
throughput; a JSON file and a PNG bar chart go to ``--out-dir``.

FLOPs: forward ``4 * B * H * L * S * E`` (two matmuls of ``2 * L * S * E``), halved when causal; forward +
backward is 3.5x the forward (the backward recomputes the scores and does four more matmuls).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import pathlib
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from tqdm import tqdm

from ..backends import Backend, NoBackendAvailableError
from ..masks import sliding_window
from ..sdpa import scaled_dot_product_attention
from ..varlen import varlen_attention
from .common import (
    TRAIN_FLOPS_FACTOR,
    Case,
    attention_flops,
    first_reasons,
    only,
    padded_lengths,
    timed_step,
    torch_refusal,
)
from .halves_ab import halves_cases
from .tile_ab import KERNELS, tile_cases
from .timing import bar_chart, median_seconds


@dataclasses.dataclass
class Result:
    name: str
    ms: float | None = None  # median time per call over the rounds
    spread: float | None = None  # (slowest round - fastest round) / median
    ratio: float | None = None  # time / fastest time
    # the first timed variant's time / this one's, per round (each round times both moments apart): median, min, max
    vs_first: tuple[float, float, float] | None = None
    tflops: float | None = None  # dense experiment
    tokens_per_s: float | None = None  # nested experiment: real tokens per second
    skipped: str | None = None  # why it could not run


def dense_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Case], float]:
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)  # (B, H, L, E)
    train = args.train
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen, requires_grad=train) for _ in range(3))
    step = timed_step(
        scaled_dot_product_attention, [q, k, v], train, q, k, v, is_causal=args.causal, dropout_p=args.dropout
    )
    variants = [
        ("TRITON", lambda: only(Backend.TRITON)),
        ("TORCH (torch picks)", lambda: only(Backend.TORCH)),
        ("TORCH: math", lambda: only(Backend.TORCH, torch_kernel=SDPBackend.MATH)),
        ("TORCH: flash", lambda: only(Backend.TORCH, torch_kernel=SDPBackend.FLASH_ATTENTION)),
        ("TORCH: efficient", lambda: only(Backend.TORCH, torch_kernel=SDPBackend.EFFICIENT_ATTENTION)),
        ("TORCH: cuDNN", lambda: only(Backend.TORCH, torch_kernel=SDPBackend.CUDNN_ATTENTION)),
        ("MATH (this repo's reference)", lambda: only(Backend.MATH)),
    ]
    flops = attention_flops(*shape[:3], args.seq_len, args.head_dim, args.causal)
    return [Case(name, ctx, step) for name, ctx in variants], flops * (TRAIN_FLOPS_FACTOR if train else 1)


def nested_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Case], int]:
    gen = torch.Generator().manual_seed(0)
    lengths = padded_lengths(args.batch, args.seq_len, gen)
    total, H, E, L = sum(lengths), args.heads, args.head_dim, args.seq_len
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    packed = [torch.randn(total, H, E, device=device, dtype=dtype, requires_grad=args.train) for _ in range(3)]

    def jagged(t: torch.Tensor) -> torch.Tensor:  # (T, H, E) -> (B, H, j, E)
        return torch.nested.nested_tensor_from_jagged(t, offsets=offsets).transpose(1, 2)

    def nested_attention(fn):
        return lambda q, k, v, **kw: fn(jagged(q), jagged(k), jagged(v), **kw)

    # The same tokens, padded to (B, H, L, E), with a key padding mask (True = may attend).
    keep = torch.arange(L, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]  # (B, L)
    padded = []
    for t in packed:
        dense = t.new_zeros(args.batch, L, H, E)
        dense[keep] = t.detach()
        padded.append(dense.transpose(1, 2).requires_grad_(args.train))  # (B, H, L, E)
    mask = keep[:, None, None, :]  # (B, 1, 1, S)

    causal = args.causal
    ours = timed_step(nested_attention(scaled_dot_product_attention), packed, args.train, *packed, is_causal=causal)
    theirs = timed_step(nested_attention(F.scaled_dot_product_attention), packed, args.train, *packed, is_causal=causal)
    masked_causal = mask & torch.ones(L, L, dtype=torch.bool, device=device).tril() if args.causal else mask
    dense = timed_step(scaled_dot_product_attention, padded, args.train, *padded, attn_mask=masked_causal)
    # The same number of real tokens as a dense batch without padding: B sequences of the mean length.
    mean = max(1, round(total / args.batch))
    unpadded = [torch.randn(args.batch, H, mean, E, device=device, dtype=dtype, requires_grad=args.train)
                for _ in range(3)]  # fmt: skip
    no_padding = timed_step(scaled_dot_product_attention, unpadded, args.train, *unpadded, is_causal=args.causal)
    # kernels.varlen_attention on the packed tensors themselves: the kernels without the nested tensor's plumbing
    # (what torch's varlen_attn below is timed on)
    cu = offsets.to(torch.int32)
    packed_call = timed_step(varlen_attention, packed, args.train, *packed, cu, cu, is_causal=causal)
    cases = [
        Case("TRITON varlen", lambda: only(Backend.TRITON), ours),
        Case("TRITON varlen_attention, packed", lambda: only(Backend.TRITON), packed_call),
        Case("TORCH on the nested tensor", lambda: only(Backend.TORCH), ours),
        Case(
            "torch's own nested SDPA",
            contextlib.nullcontext,
            theirs,
            "torch's nested SDPA refuses is_causal=True",
        ),
        Case("TORCH, padded dense + mask", lambda: only(Backend.TORCH), dense),
        Case(f"dense, no padding ({args.batch} x {mean})", contextlib.nullcontext, no_padding),
        _torch_varlen_case(packed, offsets, max(lengths), args),
    ]
    return cases, total


def _torch_varlen_case(packed: list[torch.Tensor], offsets: torch.Tensor, longest: int, args) -> Case:
    """torch's own variable-length attention (``torch.nn.attention.varlen``), where the installed torch has it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return Case("torch varlen_attn", contextlib.nullcontext, lambda: None, unavailable="not in this torch")
    import inspect

    causal = {"is_causal": args.causal} if "is_causal" in inspect.signature(varlen_attn).parameters else {}
    if args.causal and not causal:
        causal = {"window_size": (-1, 0)}
    cu = offsets.to(torch.int32)

    def attend(q, k, v):
        return varlen_attn(q, k, v, cu, cu, longest, longest, **causal)

    unavailable = None if packed[0].is_cuda else "torch's varlen_attn runs on CUDA only"
    step = timed_step(attend, packed, args.train, *packed)
    return Case("torch varlen_attn", contextlib.nullcontext, step, unavailable=unavailable)


def window_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Case], float]:
    """Full causal attention against a causal sliding window of ``--window`` keys at the same length."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    q, k, v = (
        torch.randn(shape, device=device, dtype=dtype, generator=gen, requires_grad=args.train) for _ in range(3)
    )
    window = sliding_window(args.seq_len, args.seq_len, args.window - 1)
    full = timed_step(scaled_dot_product_attention, [q, k, v], args.train, q, k, v, is_causal=True)
    band = timed_step(scaled_dot_product_attention, [q, k, v], args.train, q, k, v, attn_mask=window)
    cases = [
        Case("TORCH, full causal", lambda: only(Backend.TORCH), full),
        Case(f"TORCH, window {args.window}", lambda: only(Backend.TORCH), band),
        Case("TRITON, full causal", lambda: only(Backend.TRITON), full),
        Case(f"TRITON, window {args.window}", lambda: only(Backend.TRITON), band),
    ]
    flops = attention_flops(*shape[:3], args.seq_len, args.head_dim, True)  # the full causal work, for reference
    return cases, flops * (TRAIN_FLOPS_FACTOR if args.train else 1)


def run(args: argparse.Namespace) -> list[Result]:
    """Time every case of the chosen experiment in interleaved rounds; results with ratios filled in."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    experiment = nested_cases if args.nested else window_cases if args.window else dense_cases
    if args.tiles or args.halves:
        experiment = tile_cases if args.tiles else halves_cases
    cases, work = experiment(args, device, dtype)
    results, runnable = {}, []
    for case in cases:
        if case.unavailable:
            results[case.name] = Result(case.name, skipped=case.unavailable)
            continue
        try:
            with case.context():
                case.call()  # feasibility before any timing
            runnable.append(case)
        except NoBackendAvailableError as err:
            results[case.name] = Result(case.name, skipped=first_reasons(str(err)))
        except RuntimeError as err:  # torch refusing one of its kernels for this input
            results[case.name] = Result(case.name, skipped=case.refusal or torch_refusal(err, device))
    times: dict[str, list[float]] = {c.name: [] for c in runnable}
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round", file=sys.stderr):
        for case in runnable:  # interleaved: every case once per round
            with case.context():
                times[case.name].append(median_seconds(case.call, args.min_run_time))
    for case in runnable:
        seconds = statistics.median(times[case.name])
        result = Result(case.name, ms=seconds * 1e3, spread=(max(times[case.name]) - min(times[case.name])) / seconds)
        per_round = [a / b for a, b in zip(times[runnable[0].name], times[case.name], strict=True)]
        result.vs_first = (statistics.median(per_round), min(per_round), max(per_round))
        if args.nested:
            result.tokens_per_s = work / seconds
        else:
            result.tflops = work / seconds / 1e12
        results[case.name] = result
    ordered = [results[c.name] for c in cases]
    fastest = min((r.ms for r in ordered if r.ms is not None), default=None)
    for r in ordered:
        if r.ms is not None and fastest:
            r.ratio = r.ms / fastest
    return ordered


def title(args: argparse.Namespace) -> str:
    what = "nested batch, real tokens only" if args.nested else "dense batch"
    if args.window:
        what = f"causal, window {args.window} vs full (TFLOP/s: the full causal work per time)"
    if args.tiles:
        what = f"dense batch, {args.tiles} with each tile forced"
    if args.halves:
        what = f"grouped heads (2 per key head), causal window {args.halves}, dK/dV in halves or one launch"
        what += f", dropout {args.halves_dropout}" if args.halves_dropout else ""
    if args.dropout and not (args.nested or args.window or args.tiles or args.halves):
        what += f", dropout {args.dropout}"
    step = "forward + backward" if args.train else "forward"
    return (
        f"SDPA on {args.device}, {args.dtype}, {what}: batch {args.batch}, heads {args.heads}, "
        f"{'max ' if args.nested else ''}length {args.seq_len}, head dim {args.head_dim}, "
        f"{'' if args.window or args.halves else f'causal={args.causal}, '}{step}"
    )


def format_table(results: list[Result], args: argparse.Namespace) -> str:
    unit = "tokens/s" if args.nested else "TFLOP/s"
    width = max(32, *(len(r.name) for r in results))
    rows = [f"{'variant':<{width}} {'ms/call':>9} {'spread':>7} {'x fastest':>10} {unit:>10}  {'first / this':>20}"]
    for r in results:
        if r.ms is not None:
            rate = f"{r.tokens_per_s:>10.3g}" if args.nested else f"{r.tflops:>10.3g}"
            mid, lo, hi = r.vs_first
            vs_first = f"{mid:.2f}x ({lo:.2f}..{hi:.2f})"
            row = f"{r.name:<{width}} {r.ms:>9.3f} {100 * r.spread:>6.0f}% {r.ratio:>10.2f} {rate}"
            rows.append(f"{row}  {vs_first:>20}")
    skipped = [f"  {r.name}: {r.skipped}" for r in results if r.skipped]
    if skipped:
        rows += ["", "could not run:", *skipped]
    notes = ["", "first / this: the first variant's time over this one's in each round (median, min..max)"]
    return "\n".join([title(args), "", *rows, *notes])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--nested", action="store_true", help="the nested-vs-padded experiment")
    parser.add_argument(
        "--sweep", action="store_true", help="the kernel sweep (see python -m kernels.bench --sweep --help)"
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default="float16" if cuda else "float32", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--batch", type=int, help="default: 32 on CUDA; on CPU 4 (dense), 16 (nested)")
    parser.add_argument("--heads", type=int, help="default: 32 on CUDA, 8 on CPU")
    parser.add_argument("--seq-len", type=int, help="(maximum) length; default 1024 on CUDA, 512/256 on CPU")
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--causal", action="store_true", help="causal attention (top-left aligned)")
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, help="time forward + backward")
    parser.add_argument(
        "--dropout", type=float, default=0.0, help="the dense experiment with attention dropout p (every variant)"
    )
    parser.add_argument("--window", type=int, help="the window experiment: causal window of this many keys vs full")
    parser.add_argument("--tiles", choices=KERNELS, help="the tile experiment: this kernel with each tile forced")
    parser.add_argument("--max-tiles", type=int, default=4, help="--tiles: the first N tiles of the kernel's list")
    parser.add_argument(
        "--halves", type=int, help="the halves experiment: dK/dV in halves vs one launch, causal window of this many"
    )
    parser.add_argument(
        "--halves-dropout", type=float, default=0.0,
        help="--halves: attention dropout p as well (grouped heads with dropout: the halves load through pointers)",
    )  # fmt: skip
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median and spread)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    args = parser.parse_args(argv)
    # The tutorial's size on a GPU; on CPU sizes that time every variant in well under a minute.
    defaults = (32, 32, 1024) if cuda else ((16, 8, 256) if args.nested else (4, 8, 512))
    if args.window:
        defaults = (1, 8, 4096)
    for name, value in zip(("batch", "heads", "seq_len"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.train is None:  # the tutorial times inference; nested batches matter most in training
        args.train = args.nested or (args.tiles or "").startswith("attn_bwd") or bool(args.halves)
    if args.halves and (args.head_dim <= 128 or not args.train):
        parser.error(f"--halves times a backward above head dim 128: pass --head-dim 256 (got {args.head_dim})"
                     + ("" if args.train else " and no --no-train"))  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    # torch's nested SDPA logs why each of its kernels declines and warns that strided nested tensors are a
    # prototype (it converts to them internally): the table says what matters.
    logging.getLogger("torch.nested._internal.sdpa").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        results = run(args)
    table = format_table(results, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "sdpa_nested" if args.nested else f"sdpa_window{args.window}" if args.window else "sdpa_backends"
    halves = f"dkdv_halves_window{args.halves}" + (f"_dropout{args.halves_dropout}" if args.halves_dropout else "")
    stem = f"tiles_{args.tiles}" if args.tiles else halves if args.halves else stem
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    config = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
    payload = {
        "config": config,
        "torch": torch.__version__,
        "results": [dataclasses.asdict(r) for r in results],
    }
    json_path.write_text(json.dumps(payload, indent=2))
    timed = [r for r in results if r.ms is not None]
    plotted = bar_chart(
        png_path,
        title(args),
        [r.name for r in timed],
        {"ms per call": [r.ms for r in timed]},
        "ms per call (lower is better)",
    )
    print(table)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return results
