"""`python -m kernels.compile_check` compiles the kernels for sm_80 and sm_90 without a GPU, as the JIT compiles them,
in its own process (the kernels must be real JITFunctions, not the interpreter's)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

# one worker runs this module under pytest-xdist (--dist loadgroup): its fixture compiles for a minute and a half
pytestmark = pytest.mark.xdist_group("compile_check")

KEYS = {
    "kernel", "arch", "dtype", "head_dim", "causal", "mask", "dropout", "varlen", "block_m", "block_n", "num_warps",
    "num_stages", "registers", "spill_bytes", "shared_bytes", "wgmma", "tma", "loop_warp_instructions_per_mflop", "ok",
}  # fmt: skip


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "TRITON_DEFAULT_FP_FUSION": "1", **extra}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "reports.json"
    done = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check", "--json", str(out)],
        capture_output=True, text=True, env=_env(), timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed, 0 failed" in done.stdout
    return json.loads(out.read_text()), done.stdout


def test_covering_set_compiles_without_spills(reports):
    records, _ = reports
    assert all(r["ok"] for r in records)
    assert all(r.keys() >= KEYS for r in records if r["kernel"] != "bwd_pre")
    assert {r["arch"] for r in records} == {80, 90}
    assert {r["kernel"] for r in records} == {"fwd", "bwd_dkdv", "bwd_dq", "bwd_pre", "decode", "decode_combine"}
    main = [r for r in records if r["kernel"] in ("fwd", "bwd_dkdv", "bwd_dq")]
    for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):  # every constexpr value, per kernel and architecture
        for arch in (80, 90):
            mine = [r for r in main if r["kernel"] == kernel and r["arch"] == arch]
            assert {r["mask"] for r in mine} == {0, 1, 2} and {r["causal"] for r in mine} == {False, True}
            assert {r["dropout"] for r in mine} == {False, True} and {r["varlen"] for r in mine} == {False, True}
            assert {r["window"] for r in mine} == {False, True} and {r["gqa"] for r in mine} == {False, True}
            assert {r["dtype"] for r in mine} == {"float16", "bfloat16", "float32"}
            assert {r["head_dim"] for r in mine} >= {16, 24, 64, 80, 128, 192, 256}
    assert all(r["shared_bytes"] > 0 and r["spill_bytes"] == 0 for r in main)
    hopper = [r for r in main if r["arch"] == 90]
    # fp16/bf16 on sm_90: wgmma in every kernel at every head dim (above 128, dK/dV as its dV and dK launches, also
    # with one feature of extra state live, and as their half-head-dim launches with several)
    state = ("mask", "dropout", "varlen", "window", "gqa")
    big_dkdv = [r for r in hopper if r["kernel"] == "bwd_dkdv" and r["head_dim"] > 128 and r["dtype"] != "float32"]
    assert big_dkdv and all(r["part"] for r in big_dkdv)  # no one-launch dK/dV left there
    one = [r for r in big_dkdv if sum(bool(r[f]) for f in state) == 1]  # the covering bf16 bool-mask variant
    assert one and all(r["part"] and not r["half"] and r["wgmma"] for r in one)
    halves = [r for r in big_dkdv if r["half"]]  # packed + window + grouped heads; dropout + grouped heads
    assert {(r["part"], r["half"], r["path"]) for r in halves} == {
        (p, h, path) for p in (1, 2) for h in (1, 2) for path in ("tma", "ptr")
    }
    assert all(r["wgmma"] and sum(bool(r[f]) for f in state) > 1 for r in halves)
    # grouped heads with dropout: the halves on pointers even where the copy engine could serve
    assert all(r["path"] == "ptr" for r in halves if r["dropout"] and r["gqa"])
    assert all(r["wgmma"] for r in hopper if r["dtype"] != "float32" and r["kernel"] != "decode")
    split = [r for r in main if r["kernel"] == "bwd_dkdv" and r["part"]]
    assert {r["part"] for r in split} == {1, 2} and all(r["arch"] == 90 for r in split)
    # at head dim 128 only with grouped heads and a mask or dropout (`tiles.groups_split`), as its dV and dK
    small = [r for r in split if r["head_dim"] <= 128]
    assert small and all(r["head_dim"] == 128 and r["gqa"] and (r["mask"] or r["dropout"]) for r in small)
    assert {r["part"] for r in small} == {1, 2} and not any(r["half"] for r in small)
    assert all(r["tma"] for r in hopper if r["path"] == "tma")  # the dense sm_90 path: the copy engine
    assert {r["path"] for r in hopper} == {"tma", "ptr"}  # both paths compiled
    # the decode kernel (and its combine) on both architectures, every dtype: no spill; the split's 16-row tile
    # runs mma.sync (wgmma needs 64 rows), and has a loop profile
    decode = [r for r in records if r["kernel"] == "decode"]
    assert {(r["arch"], r["dtype"]) for r in decode} == {(a, d) for a in (80, 90) for d in ("float16", "bfloat16",
                                                                                             "float32")}  # fmt: skip
    assert all(r["spill_bytes"] == 0 and r["loop_warp_instructions_per_mflop"] for r in decode)
    assert {r["arch"] for r in records if r["kernel"] == "decode_combine"} == {80, 90}


def test_hot_loops_meet_the_static_goals(reports):
    """fp16, sm_90, no mask: forward <= 520 warp-instructions per MFLOP at d=128 (also causal), <= 1050 at d=64;
    dQ and dK/dV <= 650 at d=128 (a static proxy of the loops, not a speed claim)."""
    records, stdout = reports
    from kernels.triton.compile_check import LOOP_GOALS

    for (kernel, head_dim), goal in LOOP_GOALS.items():
        for causal in (False, True) if (kernel, head_dim) == ("fwd", 128) else (False,):
            mine = [
                r for r in records if r["kernel"] == kernel and r["arch"] == 90 and r["head_dim"] == head_dim
                and r["dtype"] == "float16" and r["causal"] == causal and r["path"] == "tma" and not r["mask"]
                and not r["dropout"] and not r["varlen"] and not r["window"] and not r["odd"] and not r["gqa"]
            ]  # fmt: skip
            assert mine, (kernel, head_dim, causal)
            best = mine[0]  # the first kept tile: the best one the autotune list has
            assert best["loop_warp_instructions_per_mflop"] <= goal, best
    assert "NOT met" not in stdout


def test_specialisation_is_the_jits():
    """For sample launches (dense and packed, both paths, every kernel), the signature, constants and
    specialisation attributes the check compiles are those Triton's JIT computes at launch."""
    script = pathlib.Path(__file__).with_name("jit_capture.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(done.stdout)
    assert {r["kernel"] for r in records} == {
        "attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq", "attn_decode_split", "attn_decode_combine"
    }  # fmt: skip
    for r in records:
        assert r["jit"] == r["check"], (r["call"], r["kernel"])
    wide = [r for r in records if r["call"] == "dense head dim 160" and r["kernel"] == "attn_bwd_dkdv"]
    assert len(wide) == 2  # the dV and the dK launch, each specialised as the JIT does
    # and the JIT does specialise: divisibility on the pointers, integers equal to 1 become constants
    fwd = next(r for r in records if r["kernel"] == "attn_fwd" and r["call"].startswith("dense causal"))
    names = fwd["arg_names"]
    assert "tt.divisibility" in fwd["jit"]["attrs"][str((names.index("Q"),))]
    assert str((names.index("GROUP"),)) in fwd["jit"]["constants"]


def test_refuses_the_interpreter():
    done = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check"], capture_output=True, text=True,
        env=_env(TRITON_INTERPRET="1"), timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "run it without TRITON_INTERPRET=1" in done.stderr


def test_measured_table_keeps_tiles_spill_free_in_every_combination(monkeypatch):
    """``--measure-tiles``' reduction: a tile is kept for a kind only when all of the kind's feature combinations
    compiled spill-free; at most ``keep`` per row, larger tiles first (compiles replaced by a rule here). A row stops
    compiling at its ``keep``-th passing tile, a tile at its first failing launch."""
    from kernels.triton import compile_check
    from kernels.triton.tiles import CONFIGS

    big = CONFIGS["attn_fwd"][0]
    compiled = []

    def fake_compile(v):  # the largest forward tile spills only with a window and grouped heads
        compiled.append(v)
        return {"ok": not (v.tile == big and v.window and v.gqa)}

    monkeypatch.setattr(compile_check, "compile_variant", fake_compile)
    table = compile_check.measure_tiles((90,), jobs=1, keep=2)
    assert set(table) == {"attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"}
    assert table["attn_fwd"][(90, "tma", 128, "plain")] == CONFIGS["attn_fwd"][:2]
    assert table["attn_fwd"][(90, "ptr", 64, "tile")] == CONFIGS["attn_fwd"][1:3]
    assert table["attn_fwd"][(90, "tma", 256, "fp32-tile")] == CONFIGS["attn_fwd"][1:3]
    assert table["attn_bwd_dq"][(90, "tma", 64, "fp32-tile")] == CONFIGS["attn_bwd_dq"][:2]
    fwd_plain = {v.tile for v in compiled if v.kernel == "fwd" and v.head_dim == 128 and v.tma and not v.varlen
                 and not v.dropout and v.dtype != "float32" and not v.mask and not v.window and not v.gqa}  # fmt: skip
    assert fwd_plain == set(CONFIGS["attn_fwd"][:2])  # the row stopped at its second tile
    big_tile_row = [v for v in compiled if v.kernel == "fwd" and v.head_dim == 64 and v.tma and v.tile == big
                    and v.dtype == "float16" and v.gqa]  # fmt: skip
    assert [v.window for v in big_tile_row] == [False, False, True]  # stopped at "tile"'s first failing combination


def test_measured_table_among_another_tables_tiles(monkeypatch, tmp_path, capsys):
    """``--among FILE``: a row takes only the tiles another run's printed table lists for it (the tiles both triton
    versions keep), in CONFIGS order; the printed table reads back (`read_table`)."""
    from kernels.triton import compile_check
    from kernels.triton.tiles import CONFIGS

    monkeypatch.setattr(compile_check, "compile_variant", lambda v: {"ok": v.tile != CONFIGS["attn_fwd"][1]})
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = ["--measure-tiles", "--kind", "plain", "--kernel", "fwd", "--head-dim-bucket", "64", "--arch", "90"]
    assert compile_check.main([*argv, "--jobs", "1", "--keep", "13"]) == 0
    every = tmp_path / "every.txt"
    every.write_text(capsys.readouterr().out)
    passing = [t for t in CONFIGS["attn_fwd"] if t != CONFIGS["attn_fwd"][1]]
    assert compile_check.read_table(every)["attn_fwd"][(90, "tma", 64, "plain")] == passing
    other = {"attn_fwd": {(90, "tma", 64, "plain"): [passing[3], passing[0], CONFIGS["attn_fwd"][1]]}}
    table = compile_check.measure_tiles((90,), 1, 3, ("fwd",), (64,), ("plain",), among=other)
    assert table["attn_fwd"] == {(90, "tma", 64, "plain"): [passing[0], passing[3]], (90, "ptr", 64, "plain"): []}


def test_tile_table_follows_the_installed_triton():
    import triton

    from kernels.triton import spill_free, tiles

    assert spill_free.for_version("3.6.0") is spill_free.BOTH_36_39
    assert spill_free.for_version("3.8.1+git1234") is spill_free.BOTH_36_39
    assert spill_free.for_version("3.9.0") is spill_free.TRITON_39 is spill_free.for_version("4.0.0")
    assert tiles.SPILL_FREE is spill_free.for_version(triton.__version__)
    for table in (spill_free.TRITON_39, spill_free.BOTH_36_39):  # every kept tile is one the autotuner has
        assert all(set(kept) <= set(tiles.CONFIGS[k]) for k, rows in table.items() for kept in rows.values())
        assert table.keys() == spill_free.TRITON_39.keys()
        assert all(table[k].keys() == spill_free.TRITON_39[k].keys() for k in table)


@pytest.mark.parametrize(
    "kernel,features,kind",
    [
        ("attn_fwd", {}, "plain"),
        ("attn_fwd", {"GROUP": 2}, "plain"),  # grouped heads add live state to dK/dV only
        ("attn_bwd_dkdv", {"GROUP": 2}, "tile"),
        ("attn_bwd_dkdv", {"VARLEN": True}, "tile:varlen"),  # one common feature set: its own row
        ("attn_bwd_dkdv", {"VARLEN": True, "HAS_DROPOUT": True}, "tile:dropout+varlen"),
        ("attn_bwd_dkdv", {"HAS_DROPOUT": True, "BLOCK_D": 64, "BLOCK_DV": 64}, "tile:dropout"),
        ("attn_bwd_dkdv", {"VARLEN": True, "HAS_LEFT": True}, "tile"),  # a window too: the "tile" row
        ("attn_bwd_dq", {"VARLEN": True}, "tile:varlen"),
        ("attn_fwd", {"VARLEN": True, "HAS_DROPOUT": True}, "tile:dropout+varlen"),
        ("attn_fwd", {"VARLEN": True, "HAS_DROPOUT": True, "HAS_LEFT": True}, "tile"),
        ("attn_fwd", {"HAS_LEFT": True}, "tile"),
        ("attn_bwd_dq", {"MASK_KIND": 2}, "tile"),
        ("attn_bwd_dkdv", {"MASK_KIND": 1, "PART": 1, "BLOCK_D": 256, "BLOCK_DV": 256}, "tile-bool"),
        ("attn_bwd_dkdv", {"MASK_KIND": 1, "HAS_DROPOUT": True, "PART": 1, "BLOCK_D": 256}, "tile"),
        ("attn_bwd_dkdv", {"MASK_KIND": 1, "HAS_DROPOUT": True, "PART": 2, "HALF": 1, "BLOCK_D": 256}, "tile-halves"),
    ],
)
def test_autotuner_prune_keeps_the_tiles_of_the_launchs_kind(monkeypatch, kernel, features, kind):
    """The run-time prune and the compile check read one rule (`tiles.kind_of`): the prune keeps exactly the table's
    row for the launch's kind (sm_90 assumed for a CPU tensor)."""
    import torch

    from kernels.triton import tiles

    monkeypatch.setattr(tiles, "INTERPRET", False)
    candidates = [tiles.triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                  for m, n, w, s in tiles.CONFIGS[kernel]]  # fmt: skip
    args = {"Q": torch.empty(1, dtype=torch.float16), "BLOCK_D": 128, "BLOCK_DV": 128, "MASK_KIND": 0,
            "HAS_DROPOUT": False, "VARLEN": False, "HAS_LEFT": False, "GROUP": 1, "USE_TMA": True,
            "HALF": 0}  # fmt: skip
    bucket = tiles.bucket_of(features.get("BLOCK_D", 128))
    # measured rows may coincide (the same tiles pass with and without a feature): tiles of its own per row here,
    # so that the tiles kept tell which row served
    table = {k: dict(rows) for k, rows in tiles.SPILL_FREE.items()}
    configs = tiles.CONFIGS[kernel]
    for i, row in enumerate(sorted(key for key in table[kernel] if key[:3] == (90, "tma", bucket))):
        table[kernel][row] = sorted({configs[i % len(configs)], configs[i // len(configs)]}, key=configs.index)
    monkeypatch.setattr(tiles, "SPILL_FREE", table)
    rows = {k: table[kernel].get((90, "tma", bucket, k)) for k in ("plain", "tile", kind)}
    assert rows["plain"] != rows["tile"] and rows[kind]
    kept = [tiles._tile(c) for c in tiles.prune_for(kernel)(candidates, {**args, **features})]
    assert kept == rows[kind]  # a dV or dK launch with one feature live: that feature's own row


def test_narrowed_rows_serve_only_their_feature_sets(monkeypatch):
    """`tiles.narrow_kind`: the "tile" kind at head dims up to 128 with exactly one of `NARROW_SETS` live reads that
    set's row; other kinds, other sets and larger head dims keep theirs, and a table without the row falls back to
    the "tile" row rather than to every tile."""
    from kernels.triton import tiles

    varlen, both = frozenset({"varlen"}), frozenset({"varlen", "dropout"})
    assert tiles.narrow_kind("tile", varlen, 128) == "tile:varlen"
    assert tiles.narrow_kind("tile", both, 64) == "tile:dropout+varlen"
    assert tiles.narrow_kind("tile", varlen, 256) == "tile"  # above 128 the split launches have their own rows
    assert tiles.narrow_kind("tile", varlen | {"gqa"}, 128) == "tile"
    assert tiles.narrow_kind("fp32-tile", varlen, 128) == "fp32-tile"  # float32 keeps its rows
    for version in (tiles.spill_free.TRITON_39, tiles.spill_free.BOTH_36_39):  # measured under both versions
        for where in ((80, "ptr"), (90, "ptr"), (90, "tma")):
            for bucket in (64, 128):
                for live in tiles.NARROW_SETS:
                    for kernel in ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv"):
                        assert (*where, bucket, tiles.narrow_kind("tile", live, bucket)) in version[kernel]
    key = (90, "tma", 128, "tile:varlen")
    table = {k: dict(rows) for k, rows in tiles.SPILL_FREE.items()}
    del table["attn_bwd_dkdv"][key]
    monkeypatch.setattr(tiles, "SPILL_FREE", table)
    fallback = table["attn_bwd_dkdv"][(*key[:3], "tile")]
    assert tiles.kept_tiles("attn_bwd_dkdv", 90, True, 128, "tile", varlen) == fallback
