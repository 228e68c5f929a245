"""``ProfilerCallback``: where the training time goes, with this package's attention under readable names.

Runs ``torch.profiler`` on a schedule (skip the first steps, wait, warm up, record a few), writes a gzipped
Chrome/Perfetto trace per rank (open it at https://ui.perfetto.dev or chrome://tracing), saves a
``key_averages`` table sorted by self device time (self CPU time without a device) and prints rank 0's, and reports
step time, tokens per second and peak memory. This package's attention calls appear as
``fusedlayers::<entry>[<backend>]`` in eager mode (compiled code shows the kernels torch generated).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import resource
import shutil
import statistics
import sys
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

__all__ = ["ProfilerCallback"]


class ProfilerCallback(pl.Callback):
    """Profile a window of training steps and report throughput.

    Args:
        skip_first: steps ignored at the start (compilation, allocator warm-up).
        wait: steps idle after that, before warm-up.
        warmup: steps profiled but discarded (the profiler's own start-up).
        active: steps recorded into the trace and the table.
        out_dir: where traces, tables and the summary go; default ``<trainer.default_root_dir>/profiler``.
        row_limit: rows of the printed table.
        record_shapes: record input shapes (larger traces).

    A run with fewer steps than the schedule needs (``fast_dev_run``, a short ``max_steps``) is profiled
    whole, without warm-up, and the callback says so instead of failing.
    """

    def __init__(
        self,
        skip_first: int = 5,
        wait: int = 1,
        warmup: int = 2,
        active: int = 5,
        out_dir: str | None = None,
        row_limit: int = 15,
        record_shapes: bool = False,
    ) -> None:
        for name, value in (("skip_first", skip_first), ("wait", wait), ("warmup", warmup)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if active < 1:
            raise ValueError(f"active must be >= 1 (the steps recorded), got {active}")
        self.skip_first, self.wait, self.warmup, self.active = skip_first, wait, warmup, active
        self.out_dir = None if out_dir is None else pathlib.Path(out_dir)
        self.row_limit, self.record_shapes = row_limit, record_shapes
        self.trace_path: pathlib.Path | None = None
        self.table_path: pathlib.Path | None = None
        self.table: str | None = None
        self.summary: dict | None = None
        self._profiler: torch.profiler.profile | None = None

    def _schedule(self, planned: float) -> torch.profiler.schedule:
        needed = self.skip_first + self.wait + self.warmup + self.active
        if planned >= needed:
            self._recorded = self.active
            return torch.profiler.schedule(
                skip_first=self.skip_first, wait=self.wait, warmup=self.warmup, active=self.active, repeat=1
            )
        steps = self._recorded = max(1, int(planned))
        rank_zero_info(
            f"ProfilerCallback: {steps} training step(s) planned (fast_dev_run or a short run), fewer than the "
            f"{needed} its schedule needs; profiling all of them, without skip or warm-up."
        )
        with warnings.catch_warnings():  # torch warns that there is no warm-up: said above already
            warnings.simplefilter("ignore", UserWarning)
            return torch.profiler.schedule(wait=0, warmup=0, active=steps, repeat=1)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out_dir is None:
            self.out_dir = pathlib.Path(trainer.default_root_dir) / "profiler"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._device = pl_module.device
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self._device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.reset_peak_memory_stats(self._device)
        self._rank = trainer.global_rank
        self._profiler = torch.profiler.profile(
            activities=activities,
            schedule=self._schedule(trainer.estimated_stepping_batches),
            on_trace_ready=self._export,
            record_shapes=self.record_shapes,
        )
        self._profiler.start()
        self._step_seconds: list[float] = []
        self._tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        seconds = time.perf_counter() - self._start
        tokens = pl_module.tokens_in_batch(batch) if hasattr(pl_module, "tokens_in_batch") else len(batch)
        self._step_seconds.append(seconds)
        self._tokens.append(tokens)
        pl_module.log("perf/step_ms", seconds * 1e3, on_step=True, on_epoch=False)
        pl_module.log("perf/tokens_per_s", tokens / seconds, on_step=True, on_epoch=False)
        if self._profiler is not None:
            self._profiler.step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._profiler is not None:
            self._profiler.stop()  # exports a recording still in progress (a run shorter than planned)
            self._profiler = None
        if self.trace_path is None:
            rank_zero_info("ProfilerCallback: training ended before the profiler's active steps; no trace written.")
        self.summary = self._summarise()
        (self.out_dir / f"summary_rank{self._rank}.json").write_text(json.dumps(self.summary, indent=2))
        s = self.summary
        if self.table is not None:
            rank_zero_info(
                f"\nWhere the time went ({self._recorded} profiled training steps, sorted by {self._sort_by}):\n"
                f"{self.table}"
            )
        rank_zero_info(
            f"ProfilerCallback: {s['steps']} steps, median step {s['median_step_ms']:.1f} ms, "
            f"{s['tokens_per_s']:.0f} tokens/s, peak memory {s['peak_memory_mb']:.0f} MB ({s['memory_kind']})."
            + (
                f"\nTrace (open in https://ui.perfetto.dev): {self.trace_path}; table: {self.table_path}"
                if self.trace_path
                else ""
            )
        )

    def _summarise(self) -> dict:
        # The first step carries compilation and allocator warm-up: leave it out when there are others.
        times = self._step_seconds[1:] or self._step_seconds
        tokens = self._tokens[1:] or self._tokens
        if self._device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self._device) / 2**20, "CUDA allocated"
        else:  # ru_maxrss: KiB on Linux, bytes on macOS
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak, kind = rss / (2**20 if sys.platform == "darwin" else 2**10), "process max RSS"
        return {
            "steps": len(self._step_seconds),
            "median_step_ms": statistics.median(times) * 1e3 if times else float("nan"),
            "tokens_per_s": sum(tokens) / sum(times) if times else float("nan"),
            "peak_memory_mb": peak,
            "memory_kind": kind,
            "trace": str(self.trace_path) if self.trace_path else None,
            "table": str(self.table_path) if self.table_path else None,
        }

    def _export(self, prof: torch.profiler.profile) -> None:
        """on_trace_ready: the gzipped trace and the table of this rank; rank 0 prints its table."""
        raw = self.out_dir / f"trace_rank{self._rank}.json"
        prof.export_chrome_trace(str(raw))
        self.trace_path = raw.with_name(raw.name + ".gz")
        with raw.open("rb") as src, gzip.open(self.trace_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        sort_by = "self_device_time_total" if self._device.type != "cpu" else "self_cpu_time_total"
        averages = prof.key_averages()
        self.table = averages.table(sort_by=sort_by, row_limit=self.row_limit) + _attention_lines(averages)
        self.table_path = self.out_dir / f"table_rank{self._rank}.txt"
        self.table_path.write_text(self.table)
        self._sort_by = sort_by


def _attention_lines(averages) -> str:
    """This package's attention ranges (``fusedlayers::...``), whose own time is small but whose total is
    the attention's share of the step, as lines under the table."""
    ranges = [e for e in averages if e.key.startswith("fusedlayers::")]
    if not ranges:
        return "\nNo fusedlayers attention range recorded (compiled code shows the kernels torch generated).\n"
    lines = ["", "This package's attention (total time including the kernels it ran):"]
    for e in sorted(ranges, key=lambda e: -e.cpu_time_total):
        device = f", device {e.device_time_total / 1e3:.2f} ms" if e.device_time_total else ""
        lines.append(f"  {e.key:<44} {e.count:>5} calls, CPU {e.cpu_time_total / 1e3:.2f} ms{device}")
    return "\n".join(lines) + "\n"
