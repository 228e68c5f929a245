"""The attention benchmarks: ``python -m kernels.bench`` (see ``--help``).

- ``python -m kernels.bench`` / ``--nested``: the backends on the SDPA tutorial's experiment, and nested against
  padded batches (`kernels.bench.backends`);
- ``python -m kernels.bench --sweep``: the kernel sweep over passes, dtypes, head dims and lengths
  (`kernels.bench.sweep`).

Each prints a table, writes JSON and a PNG plot, and times torch in the same run. ``python -m
kernels.bench.host_path`` is a diagnostic beside them: this package's host time per call, kernel launches left out
(a table and JSON).
"""

from __future__ import annotations

import sys

from .common import TRAIN_FLOPS_FACTOR, attention_flops, padded_lengths

__all__ = ["TRAIN_FLOPS_FACTOR", "attention_flops", "main", "padded_lengths"]


def main(argv: list[str] | None = None) -> list:
    """Run the experiment the arguments name; returns its results (the tests read them)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--sweep" in argv:
        from .sweep import main as sweep

        return sweep([a for a in argv if a != "--sweep"])
    from .backends import main as backends

    return backends(argv)
