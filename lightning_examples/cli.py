"""The command line: ``python -m lightning_examples {fit,validate,test} --config NAME_OR_PATH [--key value ...]``.

A LightningCLI over any LightningModule / LightningDataModule (``class_path`` in the config), with the
configs shipped in ``lightning_examples/configs`` reachable by name (``--config char_gpt``). Devices,
strategies (``--trainer.strategy ddp``, ``fsdp``) and precision come from Lightning's Trainer.
"""

from __future__ import annotations

import pathlib

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

CONFIGS = pathlib.Path(__file__).parent / "configs"

__all__ = ["CONFIGS", "main", "resolve_config_names"]


def resolve_config_names(args: list[str]) -> list[str]:
    """``--config char_gpt`` -> the packaged ``configs/char_gpt.yaml``; paths pass through unchanged."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        name = None
        if arg == "--config" and i + 1 < len(resolved):
            name, at = resolved[i + 1], i + 1
        elif arg.startswith("--config="):
            name, at = arg.split("=", 1)[1], i
        if name is None or pathlib.Path(name).exists():
            continue
        packaged = CONFIGS / f"{name}.yaml"
        if packaged.exists():
            resolved[at] = str(packaged) if at != i else f"--config={packaged}"
    return resolved


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``)."""
    import sys

    args = resolve_config_names(sys.argv[1:] if args is None else args)
    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
