"""The backend benchmark runs end to end on a tiny size (no timing is asserted: benchmarks do that)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels import bench
from kernels.reference import attention_reference


def test_flop_formula_matches_torch_flop_counter():
    B, H, L, S, E = 2, 3, 17, 23, 16
    q, k, v = torch.randn(B, H, L, E), torch.randn(B, H, S, E), torch.randn(B, H, S, E)
    with FlopCounterMode(display=False) as counter:
        attention_reference(q, k, v)
    assert bench.attention_flops(B, H, L, S, E, causal=False) == counter.get_total_flops()
    assert bench.attention_flops(B, H, L, S, E, causal=True) == counter.get_total_flops() / 2


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    argv = "--device cpu --batch 1 --heads 2 --seq-len 32 --head-dim 16".split()
    results = bench.main([*argv, "--min-run-time", "0.01", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    by_name = {r.name: r for r in results}

    assert by_name["TORCH (torch picks)"].ms > 0 and by_name["MATH (this repo's reference)"].ms > 0
    assert min(r.ratio for r in results if r.ratio is not None) == 1.0
    triton = by_name["TRITON"]  # timed under the interpreter, or skipped with its reason
    assert (triton.ms or 0) > 0 or "CPU tensor and no Triton interpreter" in triton.skipped
    assert "could not run:" in out and "x fastest" in out and "first / this" in out
    timed = [r for r in results if r.ms is not None]
    assert timed[0].vs_first == (1.0, 1.0, 1.0)  # the first timed variant against itself, every round
    assert all(lo <= mid <= hi for mid, lo, hi in (r.vs_first for r in timed))

    data = json.loads((tmp_path / "sdpa_backends.json").read_text())
    assert data["config"]["seq_len"] == 32
    assert {r["name"] for r in data["results"]} == set(by_name)
    assert (tmp_path / "sdpa_backends.png").read_bytes()[:4] == b"\x89PNG"


def test_nested_bench_counts_real_tokens(tmp_path, capsys):
    argv = "--nested --device cpu --batch 5 --heads 2 --seq-len 24 --head-dim 8".split()
    results = bench.main([*argv, "--causal", "--min-run-time", "0.01", "--out-dir", str(tmp_path)])
    by_name = {r.name: r for r in results}
    ours = by_name["TORCH on the nested tensor"]
    assert ours.ms > 0 and ours.tokens_per_s > 0 and by_name["TORCH, padded dense + mask"].ms > 0
    assert by_name["torch's own nested SDPA"].skipped == "torch's nested SDPA refuses is_causal=True"
    data = json.loads((tmp_path / "sdpa_nested.json").read_text())
    assert data["config"]["train"] is True and data["config"]["nested"] is True
    assert "real tokens only" in capsys.readouterr().out


def test_tile_experiment_forces_each_tile_and_says_which_the_prune_keeps(tmp_path, capsys):
    """``--tiles``: the autotuned kernel and its first tiles forced, labelled kept or not by the spill table (under
    the interpreter every tile runs as its one tile: the rows exist, their times mean nothing)."""
    from kernels.triton import tiles

    argv = "--tiles attn_bwd_dkdv --max-tiles 3 --device cpu --batch 1 --heads 1 --seq-len 32 --head-dim 16".split()
    results = bench.main([*argv, "--min-run-time", "0.01", "--rounds", "1", "--out-dir", str(tmp_path)])
    names = [r.name for r in results]
    assert names[0] == "attn_bwd_dkdv: autotuned" and len(names) == 4
    kept = tiles.kept_tiles("attn_bwd_dkdv", 90, True, 16, "fp32")
    for (m, n, w, s), name in zip(tiles.CONFIGS["attn_bwd_dkdv"], names[1:], strict=False):
        assert name == f"attn_bwd_dkdv {m}x{n} w{w} s{s} ({'kept' if (m, n, w, s) in kept else 'not kept'})"
    triton = results[0]  # timed under the interpreter, or skipped with its reason
    assert (triton.ms or 0) > 0 or "CPU tensor and no Triton interpreter" in triton.skipped
    data = json.loads((tmp_path / "tiles_attn_bwd_dkdv.json").read_text())
    assert data["config"]["train"] is True  # a backward kernel: forward + backward timed
    assert "attn_bwd_dkdv with each tile forced" in capsys.readouterr().out
    assert tiles._forced == {}  # every forced tile released


def test_halves_experiment_times_the_tables_launches_against_one(tmp_path, capsys, monkeypatch):
    """``--halves W``: grouped heads and a causal window at head dim 256 (fp16), dK/dV as the spill table chooses
    (its half-head-dim launches on sm_90, which the interpreter's example assumes) against one forced launch, and
    TORCH; the forced launch is released afterwards. A head dim of 128 or less is refused with the fix."""
    from kernels.triton import ops

    chosen, seen = ops.dkdv_parts, []
    monkeypatch.setattr(ops, "dkdv_parts", lambda *args: seen.append(chosen(*args)) or seen[-1])
    spy = ops.dkdv_parts
    argv = "--halves 8 --halves-dropout 0.1 --device cpu --dtype float16 --batch 1 --heads 2 --seq-len 24".split()
    argv += ["--head-dim", "256"]  # dropout too: the halves on pointers (`tiles.halves_on_pointers`)
    results = bench.main([*argv, "--min-run-time", "0.01", "--rounds", "1", "--out-dir", str(tmp_path)])
    assert [r.name for r in results] == [
        "TRITON, dK/dV as the table chooses", "TRITON, dK/dV in one launch (forced)", "TORCH, window (chunked)"
    ]  # fmt: skip
    assert results[2].ms > 0 and ops.dkdv_parts is spy  # the forced launch put the table's choice back
    if results[0].ms is not None:  # timed under the interpreter (else skipped with its reason)
        assert ((1, 1), (1, 2), (2, 1), (2, 2)) in seen  # the table's choice: the halves
    data = json.loads((tmp_path / "dkdv_halves_window8_dropout0.1.json").read_text())
    assert data["config"]["train"] is True and "causal window 8, dK/dV in halves or one launch, dropout 0.1" in (
        capsys.readouterr().out
    )
    from kernels.bench.backends import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--halves", "8", "--head-dim", "128"])
    assert "pass --head-dim 256 (got 128)" in capsys.readouterr().err


def test_padded_lengths_about_half_padding():
    lengths = bench.padded_lengths(16, 256, torch.Generator().manual_seed(0))
    assert lengths[0] == 256 and min(lengths) >= 1 and sorted(lengths) == sorted(set(lengths))
    assert sum(lengths) == 2176  # the seed's experiment: ~53% real tokens


def test_kernel_sweep_runs_what_it_can(tmp_path, capsys):
    argv = "--sweep --dtypes float16 --head-dims 16 --seq-lens 16 32 --tokens 64 --heads 1 --min-run-time 0.01"
    points = bench.main([*argv.split(), "--out-dir", str(tmp_path)])
    assert {p.step for p in points} == {"fwd", "bwd", "fwd+bwd"} and {p.causal for p in points} == {False, True}
    flash = [p for p in points if p.variant == "torch flash"]
    assert all(p.tflops > 0 and p.batch * p.seq_len == 64 for p in flash)  # constant tokens per batch
    for p in points:
        assert (p.tflops is not None) != (p.skipped is not None), p  # a time, or the reason there is none
    out = capsys.readouterr().out
    assert "fwd+bwd:" in out and "TFLOP/s" in out
    data = json.loads((tmp_path / "kernels_sweep.json").read_text())
    assert len(data["points"]) == len(points)
    assert (tmp_path / "kernels_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_padded_lengths_of_the_tutorial():
    """Most sequences near half length, one at full length: ~50% padding, few distinct lengths."""
    lengths = bench.padded_lengths(16, 256, torch.Generator().manual_seed(0), "tutorial")
    assert lengths[0] == 256 and all(118 <= n <= 138 for n in lengths[1:])
    assert 0.48 <= sum(lengths) / (16 * 256) <= 0.56
    with pytest.raises(ValueError, match="kind='odd'"):
        bench.padded_lengths(4, 8, torch.Generator(), "odd")


def test_host_path_times_every_call_and_restores_the_launcher(tmp_path, capsys):
    """``python -m kernels.bench.host_path`` (in-process: the tests already run under the interpreter) times each
    call, writes its JSON and the Python profile of TRITON's forward + backward, and leaves the real launcher in
    place; ``--device cuda`` without a card is refused with the fix."""
    import json

    from kernels.bench import host_path
    from kernels.triton import ops

    real = ops._run
    profile = tmp_path / "profile.txt"
    results = host_path.main(["--number", "3", "--repeat", "1", "--out-dir", str(tmp_path), "--cprofile", str(profile)])
    assert ops._run is real
    assert len(results) == 9 and all(us > 0 for us in results.values())
    assert json.loads((tmp_path / "host_path.json").read_text())["us_per_call"] == results
    assert "scaled_dot_product_attention" in profile.read_text()  # kernels.sdpa's entry point, profiled
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            host_path.main(["--device", "cuda", "--out-dir", str(tmp_path)])
        assert "--device cuda: no CUDA device here" in capsys.readouterr().err
