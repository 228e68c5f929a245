"""Benchmark of the attention backends: ``python -m kernels.bench``.

Two experiments, each timing every variant on one input in the same run (and ``--sweep``, the kernel
benchmark over passes, dtypes, head dims and lengths: `kernels.bench.sweep`):

- dense (default): the experiment of PyTorch's SDPA tutorial (default / math / flash / efficient on batch
  32, heads 32, length 1024, head dim 32, fp16), done through this package's dispatcher: every
  ``kernels.Backend``, and torch's own kernels forced one at a time through ``Backend.TORCH``.
- ``--nested``: a batch of lengths spread evenly up to the maximum (~50% padding), trained
  (forward + backward): ``Backend.TORCH`` on the jagged nested tensor, torch's own nested SDPA, and
  ``Backend.TORCH`` on the padded dense batch with a key padding mask. Throughput counts real tokens only.

On a machine without a GPU the default sizes are scaled down and the dtype is float32. A variant that
cannot serve the input is listed with its reason instead of a time. Output: a table (time per call, ratio
to the fastest, throughput), a JSON file and a PNG bar chart.

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
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from tqdm import tqdm

from ..backends import Backend, NoBackendAvailableError
from ..sdpa import scaled_dot_product_attention
from .common import TRAIN_FLOPS_FACTOR, attention_flops, first_reasons, only, padded_lengths, torch_refusal
from .timing import bar_chart, median_seconds


@dataclasses.dataclass
class Result:
    name: str
    ms: float | None = None  # median time per call
    ratio: float | None = None  # time / fastest time
    tflops: float | None = None  # dense experiment
    tokens_per_s: float | None = None  # nested experiment: real tokens per second
    skipped: str | None = None  # why it could not run


@dataclasses.dataclass
class Case:
    name: str
    context: Callable[[], contextlib.AbstractContextManager]
    call: Callable[[], object]  # one timed step (forward, or forward + backward)
    refusal: str | None = None  # why torch may refuse it, where torch's own message does not say


def _step(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], train: bool, *args, **kwargs):
    """A call of ``fn``; with ``train``, its backward too (gradients of ``inputs``, not accumulated)."""

    def call():
        out = fn(*args, **kwargs)
        if train:
            flat = out.values() if out.is_nested else out
            torch.autograd.grad(flat, inputs, torch.ones_like(flat))
        return out

    return call


def dense_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Case], float]:
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)  # (B, H, L, E)
    train = args.train
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen, requires_grad=train) for _ in range(3))
    step = _step(scaled_dot_product_attention, [q, k, v], train, q, k, v, is_causal=args.causal)
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

    ours = _step(nested_attention(scaled_dot_product_attention), packed, args.train, *packed, is_causal=args.causal)
    theirs = _step(nested_attention(F.scaled_dot_product_attention), packed, args.train, *packed, is_causal=args.causal)
    masked_causal = mask & torch.ones(L, L, dtype=torch.bool, device=device).tril() if args.causal else mask
    dense = _step(scaled_dot_product_attention, padded, args.train, *padded, attn_mask=masked_causal)
    cases = [
        Case("TRITON varlen", lambda: only(Backend.TRITON), ours),
        Case("TORCH on the nested tensor", lambda: only(Backend.TORCH), ours),
        Case(
            "torch's own nested SDPA",
            contextlib.nullcontext,
            theirs,
            "torch's nested SDPA refuses is_causal=True",
        ),
        Case("TORCH, padded dense + mask", lambda: only(Backend.TORCH), dense),
    ]
    return cases, total


def run(args: argparse.Namespace) -> list[Result]:
    """Time every case of the chosen experiment; returns the results with ratios filled in."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cases, work = (nested_cases if args.nested else dense_cases)(args, device, dtype)
    results = []
    for case in tqdm(cases, desc="variants", unit="variant", file=sys.stderr):
        try:
            with case.context():
                seconds = median_seconds(case.call, args.min_run_time)  # its warm-up also tests feasibility
        except NoBackendAvailableError as err:
            results.append(Result(case.name, skipped=first_reasons(str(err))))
            continue
        except RuntimeError as err:  # torch refusing one of its kernels for this input
            results.append(Result(case.name, skipped=case.refusal or torch_refusal(err, device)))
            continue
        result = Result(case.name, ms=seconds * 1e3)
        if args.nested:
            result.tokens_per_s = work / seconds
        else:
            result.tflops = work / seconds / 1e12
        results.append(result)
    fastest = min((r.ms for r in results if r.ms is not None), default=None)
    for r in results:
        if r.ms is not None and fastest:
            r.ratio = r.ms / fastest
    return results


def title(args: argparse.Namespace) -> str:
    what = "nested batch, real tokens only" if args.nested else "dense batch"
    step = "forward + backward" if args.train else "forward"
    return (
        f"SDPA on {args.device}, {args.dtype}, {what}: batch {args.batch}, heads {args.heads}, "
        f"{'max ' if args.nested else ''}length {args.seq_len}, head dim {args.head_dim}, "
        f"causal={args.causal}, {step}"
    )


def format_table(results: list[Result], args: argparse.Namespace) -> str:
    unit = "tokens/s" if args.nested else "TFLOP/s"
    rows = [f"{'variant':<30} {'ms/call':>9} {'x fastest':>10} {unit:>10}"]
    for r in results:
        if r.ms is not None:
            rate = f"{r.tokens_per_s:>10.3g}" if args.nested else f"{r.tflops:>10.3f}"
            rows.append(f"{r.name:<30} {r.ms:>9.3f} {r.ratio:>10.2f} {rate}")
    skipped = [f"  {r.name}: {r.skipped}" for r in results if r.skipped]
    if skipped:
        rows += ["", "could not run:", *skipped]
    return "\n".join([title(args), "", *rows])


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
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per variant")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    args = parser.parse_args(argv)
    # The tutorial's size on a GPU; on CPU sizes that time every variant in well under a minute.
    defaults = (32, 32, 1024) if cuda else ((16, 8, 256) if args.nested else (4, 8, 512))
    for name, value in zip(("batch", "heads", "seq_len"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.train is None:
        args.train = args.nested  # the tutorial times inference; nested batches matter most in training
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
    stem = "sdpa_nested" if args.nested else "sdpa_backends"
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
