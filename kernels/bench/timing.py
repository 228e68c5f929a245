"""What the benchmark scripts share: timing a call, and a bar chart of the results."""

from __future__ import annotations

import logging
import pathlib
import textwrap
from collections.abc import Callable

import torch
from torch.utils import benchmark as torch_benchmark

__all__ = ["bar_chart", "line_charts", "median_seconds"]

log = logging.getLogger(__name__)


def median_seconds(call: Callable[[], object], min_run_time: float) -> float:
    """Median seconds per ``call()`` over at least ``min_run_time`` seconds of runs (after one warm-up).

    ``torch.utils.benchmark`` synchronises CUDA around each block; it defaults to one thread, so the
    thread count is set to torch's, which is what users get.
    """
    call()
    timer = torch_benchmark.Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def bar_chart(
    path: pathlib.Path, title: str, labels: list[str], series: dict[str, list[float | None]], xlabel: str
) -> bool:
    """Horizontal bars, one group per label and one bar per series; False (logged) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    height = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) * len(series) + 1.8))
    top = max((v for values in series.values() for v in values if v is not None), default=1.0)
    for i, (name, values) in enumerate(series.items()):
        ys = [row + i * height for row in range(len(labels))]
        bars = [v if v is not None else 0.0 for v in values]
        ax.barh(ys, bars, height=height, label=name)
        for y, v in zip(ys, values, strict=True):
            if v is not None:
                ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    ax.set_yticks([row + height * (len(series) - 1) / 2 for row in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, top * 1.25)
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    if len(series) > 1:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def line_charts(path: pathlib.Path, title: str, panels: dict[str, dict[str, list[tuple[float, float | None]]]]) -> bool:
    """One small panel per key, one line per series of ``(x, y)`` points (``y`` None: not run), log-2 x axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    cols = min(4, len(panels)) or 1
    rows = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items(), strict=False):
        for label, points in series.items():
            xs = [x for x, y in points if y is not None]
            ax.plot(xs, [y for _, y in points if y is not None], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("sequence length", fontsize=7)
        ax.set_ylabel("TFLOP/s", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
