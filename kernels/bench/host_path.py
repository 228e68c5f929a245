"""``python -m kernels.bench.host_path``: the host's time per fused-attention call, kernel launches left out.

On a GPU a small call is bound by what the host does before its kernels start (docs/benchmarks.md, the H200 run of
2026-11-28). This measures that part on any machine: the Triton interpreter stands in for the device (the command
runs itself again with ``TRITON_INTERPRET=1`` where that is not set) and the launches themselves are replaced by a
no-op, so what is timed is this package's Python (validation, dispatch, launch preparation, autograd) for
``TRITON``, against ``TORCH`` and ``F.scaled_dot_product_attention`` on a tiny CPU input where their compute is
negligible. Prints a table (microseconds per call, the best of ``--repeat`` timings of ``--number`` calls) and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import timeit

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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench.host_path", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=3, help="timings per call (the best is reported)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    args = parser.parse_args(argv)
    if not tiles.INTERPRET:  # Triton decides at import whether it interprets: run again with the interpreter
        argv = sys.argv[1:] if argv is None else argv
        os.execvpe(sys.executable, [sys.executable, "-m", "kernels.bench.host_path", *argv],
                   {**os.environ, "TRITON_INTERPRET": "1"})  # fmt: skip
    real_run = ops._run
    ops._run = lambda launch: None  # the launches themselves: not the host path being measured
    try:
        calls = _calls(torch.randn(1, 1, 16, 16))
        results = {}
        for name, call in calls.items():
            call()  # warm: first-call caches
            best = min(timeit.repeat(call, number=args.number, repeat=args.repeat)) / args.number
            results[name] = round(best * 1e6, 1)
    finally:
        ops._run = real_run
    width = max(map(len, results))
    print(f"host time per call, kernel launches left out (best of {args.repeat} x {args.number} calls)\n")
    print("\n".join(f"{name:<{width}}  {us:>8.1f} us" for name, us in results.items()))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "host_path.json"
    path.write_text(json.dumps({"torch": torch.__version__, "us_per_call": results}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
