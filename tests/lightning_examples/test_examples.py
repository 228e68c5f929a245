"""The Lightning examples: they run, they learn, they profile, they checkpoint across the compile switch."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lightning_examples.cli import CONFIGS, main, resolve_config_names
from lightning_examples.data import StdlibTextDataModule, VarLenClassificationDataModule
from lightning_examples.models import CharGPT, SequenceClassifier
from lightning_examples.profiler import ProfilerCallback

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:The number of training batches:UserWarning",
    "ignore:You're resuming from a checkpoint that ended before the epoch ended",  # on purpose, below
    "ignore:`torch.jit.script_method` is deprecated",  # raised inside torch when Lightning imports it
)


def tiny_gpt(**kwargs) -> CharGPT:
    return CharGPT(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, sample_tokens=0, **kwargs)


def tiny_text() -> StdlibTextDataModule:
    return StdlibTextDataModule(block_size=32, batch_size=8, max_bytes=50_000)


def tiny_classifier(**kwargs) -> SequenceClassifier:
    return SequenceClassifier(
        vocab_size=16, num_classes=3, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, **kwargs
    )


def tiny_varlen() -> VarLenClassificationDataModule:
    return VarLenClassificationDataModule(
        num_classes=3, vocab_size=16, max_len=20, train_size=64, val_size=32, batch_size=8
    )


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("example", ["gpt", "classifier"])
def test_fast_dev_run_eager(tmp_path, example):
    model, data = (tiny_gpt(), tiny_text()) if example == "gpt" else (tiny_classifier(), tiny_varlen())
    profiler = ProfilerCallback()
    trainer(tmp_path, fast_dev_run=2, callbacks=[profiler]).fit(model, data)
    assert profiler.summary["steps"] == 2 and profiler.trace_path.exists()  # profiled whole, as it said


def test_classifier_batches_are_jagged_nested():
    data = tiny_varlen()
    data.setup()
    tokens, labels = next(iter(data.train_dataloader()))
    assert tokens.is_nested and tokens.layout == torch.jagged and labels.shape == (8,)
    lengths = tokens.offsets().diff()
    assert lengths.min() >= data.hparams.min_len and len(set(lengths.tolist())) > 1


def test_profiler_trace_and_table(tmp_path, caplog):
    profiler = ProfilerCallback(skip_first=1, wait=1, warmup=1, active=2, out_dir=str(tmp_path / "prof"))
    trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[profiler]).fit(tiny_gpt(), tiny_text())
    with gzip.open(profiler.trace_path) as f:
        trace = json.load(f)  # Chrome/Perfetto trace: valid JSON with events
    assert profiler.trace_path.name == "trace_rank0.json.gz" and trace["traceEvents"]
    assert "fusedlayers::attention[TORCH]" in profiler.table  # the repo's attention under its readable name
    assert profiler.table_path.read_text() == profiler.table
    summary = json.loads((tmp_path / "prof" / "summary_rank0.json").read_text())
    assert summary["steps"] == 6 and summary["tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0


def test_profiler_argument_errors():
    with pytest.raises(ValueError, match=r"active must be >= 1 \(the steps recorded\), got 0"):
        ProfilerCallback(active=0)
    with pytest.raises(ValueError, match="wait must be >= 0, got -1"):
        ProfilerCallback(wait=-1)


def test_compiled_run_checkpoint_loads_eager_and_back(tmp_path):
    """One compiled fast_dev_run (compiling costs ~20 s on CPU); its checkpoint has clean keys, loads into
    an eager model with the same outputs, resumes eagerly, and an eager checkpoint loads into a compiled model."""
    pl.seed_everything(0)
    data = tiny_text()
    compiled = tiny_gpt(compile=True)
    profiler = ProfilerCallback(out_dir=str(tmp_path / "prof"))  # the callback works under compile too
    run = trainer(
        tmp_path / "compiled", max_steps=2, limit_val_batches=0, enable_checkpointing=False, callbacks=[profiler]
    )
    run.fit(compiled, data)
    assert profiler.trace_path.exists() and "Self CPU time total" in profiler.table
    path = tmp_path / "compiled.ckpt"
    run.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key for key in state)

    eager = tiny_gpt()
    eager.load_state_dict(state, strict=True)
    x = torch.randint(0, 256, (2, 32))
    compiled.eval(), eager.eval()
    torch.testing.assert_close(eager(x), compiled(x), rtol=1e-4, atol=1e-4)

    resumed = trainer(tmp_path / "resumed", max_steps=4, limit_val_batches=0, enable_checkpointing=False)
    resumed.fit(tiny_gpt(), data, ckpt_path=path)  # resume a compiled run's checkpoint in eager mode
    assert resumed.global_step == 4
    back = tiny_gpt(compile=True)
    back.configure_model()
    back.load_state_dict(resumed.lightning_module.state_dict(), strict=True)


def test_learning_beats_the_unigram_baseline(tmp_path):
    """A short training run predicts held-out bytes much better than byte frequencies do."""
    pl.seed_everything(0)
    data = StdlibTextDataModule(block_size=64, batch_size=32, max_bytes=300_000)
    model = CharGPT(block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0, warmup_steps=20, sample_tokens=40)
    run = trainer(tmp_path, max_steps=400, val_check_interval=400, check_val_every_n_epoch=None, limit_val_batches=20)
    run.fit(model, data)
    loss, unigram = run.callback_metrics["val/loss"].item(), data.unigram_entropy()
    assert loss < 0.7 * unigram, f"validation loss {loss:.3f} nats/byte, unigram baseline {unigram:.3f}"
    assert math.isclose(run.callback_metrics["val/perplexity"].item(), math.exp(loss), rel_tol=1e-5)
    assert model.sample.startswith("def ") and len(model.sample) > 10


def test_data_is_deterministic_and_offline():
    a, b = tiny_text(), tiny_text()
    a.setup(), b.setup()
    assert torch.equal(a.train_data, b.train_data) and torch.equal(a.val_data, b.val_data)
    assert len(a.train_data) == 45_000 and len(a.val_data) == 5_000
    x, y = next(iter(a.val_dataloader()))
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one byte


def test_print_config_round_trips(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m lightning_examples"])  # what a user's command line holds
    with pytest.raises(SystemExit):
        main(["fit", "--config", "classifier", "--model.init_args.d_model", "32", "--print_config"])
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["d_model"] == 32
    assert config["data"]["class_path"] == "lightning_examples.data.VarLenClassificationDataModule"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == config


def test_packaged_configs_by_name():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= {"char_gpt", "classifier", "demo"}
    assert resolve_config_names(["fit", "--config", "demo"]) == ["fit", "--config", str(CONFIGS / "demo.yaml")]
    assert resolve_config_names(["fit", "--config=char_gpt"]) == ["fit", f"--config={CONFIGS / 'char_gpt.yaml'}"]
    assert resolve_config_names(["fit", "--config", "mine.yaml"]) == ["fit", "--config", "mine.yaml"]


def test_cli_ddp_two_processes_on_cpu(tmp_path):
    """Lightning's own DDP strategy (gloo on CPU) with 2 processes, through the CLI a user runs."""
    args = [
        sys.executable, "-m", "lightning_examples", "fit", "--config", "classifier",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.fast_dev_run", "2", "--trainer.enable_progress_bar", "false",
        f"--trainer.default_root_dir={tmp_path}",
        "--model.init_args.d_model", "16", "--model.init_args.nhead", "2",
        "--data.init_args.train_size", "64", "--data.init_args.val_size", "32",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr
    for rank in (0, 1):
        assert (tmp_path / "profiler" / f"trace_rank{rank}.json.gz").exists()
