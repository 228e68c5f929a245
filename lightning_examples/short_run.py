"""``python -m lightning_examples.short_run``: a short, profiled training run of the byte-level GPT, without the CLI.

For a quick look on a new machine (``make gpu-check`` runs it on the GPU): no config parser (no jsonargparse), a
few hundred steps, the `ProfilerCallback` table (where this package's attention appears as
``fusedlayers::attention[<BACKEND>]``), and a JSON summary with the step time, tokens per second, the validation
loss and which attention backend the profiler saw.

```bash
python -m lightning_examples.short_run --steps 300 --out-dir short-run
```
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import warnings

import pytorch_lightning as pl
import torch

from .data import StdlibTextDataModule
from .models import CharGPT
from .profiler import ProfilerCallback

__all__ = ["main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m lightning_examples.short_run", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16-mixed" if cuda else "32-true", help="Lightning's precision")
    parser.add_argument("--block-size", type=int, default=256 if cuda else 64)
    parser.add_argument("--batch-size", type=int, default=64 if cuda else 16)
    parser.add_argument("--n-layer", type=int, default=6 if cuda else 2)
    parser.add_argument("--n-embd", type=int, default=384 if cuda else 64, help="width; 6 heads (head dim n_embd/6)")
    parser.add_argument("--max-bytes", type=int, default=2_000_000 if cuda else 200_000)
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("short-run"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, print the profiler table, write ``summary.json`` into ``--out-dir``; returns the summary."""
    args = parse_args(argv)
    pl.seed_everything(0, verbose=False)
    heads = 6 if args.n_embd % 6 == 0 else 4
    model = CharGPT(
        block_size=args.block_size, n_layer=args.n_layer, n_head=heads, n_embd=args.n_embd, dropout=0.0,
        warmup_steps=min(50, args.steps), sample_tokens=0,
    )  # fmt: skip
    data = StdlibTextDataModule(block_size=args.block_size, batch_size=args.batch_size, max_bytes=args.max_bytes)
    profiler = ProfilerCallback(skip_first=min(20, args.steps // 4), active=5, out_dir=str(args.out_dir / "profiler"))
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=args.steps, limit_val_batches=10, val_check_interval=args.steps, check_val_every_n_epoch=None,
        callbacks=[profiler], logger=False, enable_checkpointing=False, enable_model_summary=False,
        default_root_dir=str(args.out_dir), enable_progress_bar=False,
    )  # fmt: skip
    with warnings.catch_warnings():  # Lightning's advice on dataloader workers: not what this run measures
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, data)
    table = profiler.table or ""
    backends = sorted(set(re.findall(r"fusedlayers::\w+\[(\w+)\]", table)))
    val = trainer.callback_metrics.get("val/loss")
    summary = {
        **(profiler.summary or {}),
        "device": args.device,
        "precision": args.precision,
        "steps_requested": args.steps,
        "attention_backends_profiled": backends,
        "val_loss": None if val is None else float(val),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
