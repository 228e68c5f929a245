"""Benchmark of the attention backends: ``python -m kernels.bench``.

The experiment of PyTorch's SDPA tutorial (default / math / flash / efficient on batch 32, heads 32,
length 1024, head dim 32, fp16), done through this package's dispatcher: every backend of
`kernels.Backend`, and torch's own kernels one by one through ``Backend.TORCH``. On a machine
without a GPU the default size is scaled down and the dtype is float32 (torch's CPU kernels are
fastest there). A backend that cannot serve the input is listed with its reason instead of a time.

Output: a table (time per call, ratio to the fastest, TFLOP/s), a JSON file and a PNG bar chart.
FLOPs of the forward pass: ``4 * B * H * L * S * E`` (two matmuls of ``2 * L * S * E`` each), halved
when causal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import pathlib
import sys
import textwrap
from collections.abc import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel as torch_sdpa_kernel
from torch.utils import benchmark as torch_benchmark
from tqdm import tqdm

from .backends import Backend, NoBackendAvailableError, sdpa_kernel
from .sdpa import scaled_dot_product_attention

log = logging.getLogger(__name__)

# The tutorial's torch kernels, as TORCH sub-variants: (label, torch backend or None for torch's own choice).
_TORCH_VARIANTS = (
    ("TORCH (torch picks)", None),
    ("TORCH: math", SDPBackend.MATH),
    ("TORCH: flash", SDPBackend.FLASH_ATTENTION),
    ("TORCH: efficient", SDPBackend.EFFICIENT_ATTENTION),
    ("TORCH: cuDNN", SDPBackend.CUDNN_ATTENTION),
)


@dataclasses.dataclass
class Result:
    name: str
    ms: float | None = None  # median time per call
    tflops: float | None = None
    ratio: float | None = None  # time / fastest time
    skipped: str | None = None  # why it could not run


def attention_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs of attention: two (L x S x E) matmuls, 2 FLOPs per multiply-add; causal halves it."""
    flops = 4.0 * batch * heads * q_len * k_len * head_dim
    return flops / 2 if causal else flops


def _variants() -> Iterator[tuple[str, Callable[[], contextlib.AbstractContextManager]]]:
    yield "TRITON", lambda: sdpa_kernel([Backend.TRITON])
    for label, torch_backend in _TORCH_VARIANTS:
        if torch_backend is None:
            yield label, lambda: sdpa_kernel([Backend.TORCH])
        else:
            yield label, lambda b=torch_backend: _torch_only(b)
    yield "MATH (this repo's reference)", lambda: sdpa_kernel([Backend.MATH])


@contextlib.contextmanager
def _torch_only(torch_backend: SDPBackend) -> Iterator[None]:
    with sdpa_kernel([Backend.TORCH]), torch_sdpa_kernel(torch_backend):
        yield


def run(args: argparse.Namespace) -> list[Result]:
    """Time every variant on one input; returns the results with ratios filled in."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)  # (B, H, L, E)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(3))
    flops = attention_flops(*shape[:3], args.seq_len, args.head_dim, args.causal)

    results = []
    for name, context in tqdm(list(_variants()), desc="backends", unit="backend", file=sys.stderr):
        try:
            with context():
                scaled_dot_product_attention(q, k, v, is_causal=args.causal)  # warm-up and feasibility
                timer = torch_benchmark.Timer(
                    "f(q, k, v, is_causal=c)",
                    globals={"f": scaled_dot_product_attention, "q": q, "k": k, "v": v, "c": args.causal},
                )
                measurement = timer.blocked_autorange(min_run_time=args.min_run_time)
        except NoBackendAvailableError as err:
            results.append(Result(name, skipped=_first_reasons(str(err))))
            continue
        except RuntimeError as err:  # torch refusing one of its kernels for this input
            reason = str(err).splitlines()[0]
            if device.type == "cpu":
                reason = "torch has no CPU kernel for it (on CPU torch implements flash and math only)"
            results.append(Result(name, skipped=reason))
            continue
        seconds = measurement.median
        results.append(Result(name, ms=seconds * 1e3, tflops=flops / seconds / 1e12))
    fastest = min((r.ms for r in results if r.ms is not None), default=None)
    for r in results:
        if r.ms is not None and fastest:
            r.ratio = r.ms / fastest
    return results


def _first_reasons(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    return "; ".join(line.split(": ", 1)[-1] for line in lines) or message


def format_table(results: list[Result], args: argparse.Namespace) -> str:
    header = (
        f"SDPA backends on {args.device}, {args.dtype}, batch {args.batch}, heads {args.heads}, "
        f"length {args.seq_len}, head dim {args.head_dim}, causal={args.causal}, forward pass"
    )
    rows = [f"{'backend':<30} {'ms/call':>9} {'x fastest':>10} {'TFLOP/s':>9}"]
    for r in results:
        if r.ms is None:
            continue
        rows.append(f"{r.name:<30} {r.ms:>9.3f} {r.ratio:>10.2f} {r.tflops:>9.3f}")
    skipped = [f"  {r.name}: {r.skipped}" for r in results if r.skipped]
    if skipped:
        rows += ["", "could not run:", *skipped]
    return "\n".join([header, "", *rows])


def write_plot(results: list[Result], path: pathlib.Path, title: str) -> bool:
    """A horizontal bar chart of ms/call; returns False (and logs why) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    timed = [r for r in results if r.ms is not None]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(timed) + 1.5))
    ax.barh([r.name for r in timed], [r.ms for r in timed], color="tab:blue")
    for i, r in enumerate(timed):
        ax.text(r.ms, i, f" {r.ms:.2f} ms ({r.ratio:.2f}x)", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("ms per call (lower is better)")
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.set_xlim(0, max(r.ms for r in timed) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    # The tutorial's size on a GPU; on CPU a size that times every backend in well under a minute.
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--dtype", default="float16" if cuda else "float32", choices=["float16", "bfloat16", "float32"]
    )
    parser.add_argument("--batch", type=int, default=32 if cuda else 4)
    parser.add_argument("--heads", type=int, default=32 if cuda else 8)
    parser.add_argument("--seq-len", type=int, default=1024 if cuda else 512)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--causal", action="store_true", help="causal attention (top-left aligned)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per backend")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    results = run(args)
    table = format_table(results, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out_dir / "sdpa_backends.json", args.out_dir / "sdpa_backends.png"
    config = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
    payload = {
        "config": config,
        "torch": torch.__version__,
        "results": [dataclasses.asdict(r) for r in results],
    }
    json_path.write_text(json.dumps(payload, indent=2))
    plotted = write_plot(results, png_path, table.splitlines()[0])
    print(table)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return results


if __name__ == "__main__":
    main()
