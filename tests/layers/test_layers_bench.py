"""The layer benchmark runs end to end on a tiny model (no timing is asserted: benchmarks do that)."""

from __future__ import annotations

import json

import pytest
import torch

from layers import bench
from layers.bench.cases import CASES, build

TINY = "--device cpu --batch 3 --seq-len 12 --d-model 16 --nhead 2 --dim-feedforward 24 --num-layers 1".split()


def test_layer_bench_writes_table_json_and_plot(tmp_path, capsys):
    argv = [*TINY, "--rounds", "2", "--min-run-time", "0.001", "--no-busy", "--out-dir", str(tmp_path)]
    rows = bench.main([*argv, "--cases", "train-padded", "infer-dense", "train-decoder"])
    assert [r.case for r in rows] == ["train-padded", "infer-dense", "train-decoder"]
    assert all(r.torch_ms > 0 and r.ours_ms > 0 and r.ratio_min <= r.ratio <= r.ratio_max for r in rows)
    out = capsys.readouterr().out
    assert "ours/torch" in out and "spread" in out and "goal" in out
    data = json.loads((tmp_path / "layers.json").read_text())
    assert [r["goal"] for r in data["rows"]] == [0.45, 1.0, 0.45]
    assert data["config"]["busy"] is False and data["threads"] == torch.get_num_threads()
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", CASES)
def test_cases_time_the_same_weights_and_run(name):
    """Every case: ours is a converted copy of torch's model (equal weights, separate storage) and both calls run."""
    args = bench.parse_args([*TINY, "--dropout", "0.0"])
    (case,) = build(args, [name])
    theirs, ours = case.models
    assert any(type(m).__module__.startswith("layers.") for m in ours.modules())
    for (key, a), (_, b) in zip(theirs.state_dict().items(), ours.state_dict().items(), strict=True):
        assert a.data_ptr() != b.data_ptr() and a.equal(b), key
    case.theirs()
    case.ours()
    if name.startswith("train"):  # the step clears the gradients it made, as an optimizer's zero_grad would
        assert all(p.grad is None for p in ours.parameters())


def test_decode_bench_checks_cached_equals_uncached(tmp_path, capsys):
    argv = "--decode --new-tokens 6 --prompt-len 3 --block-size 16 --decode-batches 2 --rounds 1 --no-decode-compile"
    argv = argv.split()
    rows = bench.main([*TINY, *argv, "--min-run-time", "0.001", "--out-dir", str(tmp_path)])
    assert len(rows) == 1 and rows[0].with_ms > 0 and rows[0].without_ms > 0
    assert "speed-up" in capsys.readouterr().out
    assert json.loads((tmp_path / "decode.json").read_text())["rows"][0]["case"] == rows[0].case
