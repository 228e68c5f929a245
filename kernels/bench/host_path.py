"""``python -m kernels.bench.host_path``: the host's time per fused-attention call, kernel launches left out.

On a GPU a small call is bound by what the host does before its kernels start (docs/benchmarks.md, the H200 run of
2026-11-28). This measures that part on any machine: the Triton interpreter stands in for the device (the command
runs itself again with ``TRITON_INTERPRET=1`` where that is not set) and the launches themselves are replaced by a
no-op, so what is timed is this package's Python (validation, dispatch, launch preparation, autograd) for
``TRITON``, against ``TORCH`` and ``F.scaled_dot_product_attention`` on a tiny CPU input where their compute is
negligible. Prints a table (microseconds per call, the best of ``--repeat`` timings of ``--number`` calls) and
writes JSON.

``--device cuda`` times the same calls on the card with their launches (B=1, 2 heads, L=128, d=64, fp16: every
kernel takes microseconds, so a call's time is its host's), each timing ending in a synchronisation; ``--cprofile
FILE`` writes a Python profile of ``--number`` TRITON forward + backward calls there (where the host time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pathlib
import pstats
import sys
import time

import torch
import torch.nn.functional as F

import kernels
from kernels import Backend, sdpa_kernel
from kernels.triton import ops, tiles


def _calls(q: torch.Tensor) -> dict:
    """name -> a call with no argument."""
    k, v = torch.randn_like(q), torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    layout = ops._Layout(q, k)
    _, out, lse = ops.forward_launch(q, k, v, None, None, 0.0, 0.125, -1, -1, False, False, layout, tma=False)

    def ours(backend, train, p=0.0):
        def call():
            with sdpa_kernel(backend):
                if train:
                    kernels.scaled_dot_product_attention(*leaves, dropout_p=p).sum().backward()
                else:
                    with torch.no_grad():
                        kernels.scaled_dot_product_attention(q, k, v, dropout_p=p)

        return call

    def torchs(train):
        def call():
            if train:
                F.scaled_dot_product_attention(*leaves).sum().backward()
            else:
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v)

        return call

    def bwd_prep():
        ops.backward_launches(out, q, k, v, None, None, out, lse, 0.0, 0.125, -1, -1, False, False, layout, tma=False)

    return {
        "TRITON launch prep, forward": lambda: ops.forward_launch(
            q, k, v, None, None, 0.0, 0.125, -1, -1, False, False, layout, tma=False
        ),
        "TRITON launch prep, backward": bwd_prep,
        "F.sdpa forward": torchs(False),
        "F.sdpa forward + backward": torchs(True),
        "TORCH forward": ours(Backend.TORCH, False),
        "TORCH forward + backward": ours(Backend.TORCH, True),
        "TRITON forward": ours(Backend.TRITON, False),
        "TRITON forward + backward": ours(Backend.TRITON, True),
        "TRITON forward + backward, dropout 0.1": ours(Backend.TRITON, True, 0.1),
    }


def _best_per_call(call, number: int, repeat: int, sync) -> float:
    """Seconds per call: the best of ``repeat`` timings of ``number`` calls, each timing ending with ``sync()``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            call()
        sync()
        best = min(best, time.perf_counter() - start)
    return best / number


def _profile(call, number: int, path: pathlib.Path) -> None:
    """A Python profile of ``number`` calls of ``call``: the top 40 functions by cumulative and by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(number):
        call()
    profiler.disable()
    text = io.StringIO()
    for order in ("cumulative", "tottime"):
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench.host_path", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=3, help="timings per call (the best is reported)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu: the interpreter, launches left out; cuda: the card, launches included")  # fmt: skip
    parser.add_argument("--cprofile", type=pathlib.Path, help="write a profile of TRITON forward + backward here")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    args = parser.parse_args(argv)
    on_card = args.device == "cuda"
    if on_card and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (without it, the default measures on the CPU)")
    if not on_card and not tiles.INTERPRET:  # Triton decides at import whether it interprets: run again with it
        argv = sys.argv[1:] if argv is None else argv
        os.execvpe(sys.executable, [sys.executable, "-m", "kernels.bench.host_path", *argv],
                   {**os.environ, "TRITON_INTERPRET": "1"})  # fmt: skip
    real_run = ops._run
    if not on_card:
        ops._run = lambda launch: None  # the launches themselves: not the host path being measured
    try:
        if on_card:
            calls = _calls(torch.randn(1, 2, 128, 64, device="cuda", dtype=torch.float16))
        else:
            calls = _calls(torch.randn(1, 1, 16, 16))
        sync = torch.cuda.synchronize if on_card else lambda: None
        results = {}
        for name, call in calls.items():
            call()  # warm: first-call caches, compiles and tuning on the card
            results[name] = round(_best_per_call(call, args.number, args.repeat, sync) * 1e6, 1)
        if args.cprofile:
            _profile(calls["TRITON forward + backward"], args.number, args.cprofile)
    finally:
        ops._run = real_run
    width = max(map(len, results))
    what = "launches included, synchronised" if on_card else "kernel launches left out"
    print(f"host time per call on {args.device}, {what} (best of {args.repeat} x {args.number} calls)\n")
    print("\n".join(f"{name:<{width}}  {us:>8.1f} us" for name, us in results.items()))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "host_path.json"
    record = {"torch": torch.__version__, "device": args.device, "us_per_call": results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path}" + (f" and {args.cprofile}" if args.cprofile else ""))
    return results


if __name__ == "__main__":
    main()
