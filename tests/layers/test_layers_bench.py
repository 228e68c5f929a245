"""The layer benchmark runs end to end on a tiny model (no timing is asserted: benchmarks do that)."""

from __future__ import annotations

import json

from layers import bench


def test_layer_bench_writes_table_json_and_plot(tmp_path, capsys):
    argv = "--device cpu --batch 4 --seq-len 16 --d-model 16 --nhead 2 --dim-feedforward 32 --no-compile".split()
    rows = bench.main([*argv, "--min-run-time", "0.01", "--out-dir", str(tmp_path)])
    assert [(r.step, r.batch, r.mode) for r in rows] == [
        ("train", "dense", "eager"),
        ("train", "padded", "eager"),
        ("inference", "dense", "eager"),
        ("inference", "padded", "eager"),
    ]
    assert all(r.torch_ms > 0 and r.ours_ms > 0 for r in rows)
    out = capsys.readouterr().out
    assert "ours/torch" in out and "goal" in out
    data = json.loads((tmp_path / "layers.json").read_text())
    assert data["rows"][1]["goal"] == 1 / 1.8 and data["config"]["compile"] is False
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"


def test_models_share_weights():
    args = bench.parse_args("--d-model 16 --nhead 2 --dim-feedforward 32".split())
    theirs, ours = bench.build_models(args, device="cpu", dtype=None)
    assert type(ours.layers[0]).__module__ == "layers.encoder"
    for (name, a), (_, b) in zip(theirs.state_dict().items(), ours.state_dict().items(), strict=True):
        assert a.data_ptr() != b.data_ptr() and a.equal(b), name
