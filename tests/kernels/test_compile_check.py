"""`python -m kernels.compile_check` compiles the kernels for sm_80 and sm_90 without a GPU, in its own process
(the kernels must be real JITFunctions, not the interpreter's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "TRITON_DEFAULT_FP_FUSION": "1", **extra}


def test_covering_set_compiles_without_spills(tmp_path):
    out = tmp_path / "reports.json"
    done = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check", "--json", str(out)],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    reports = json.loads(out.read_text())
    assert all(r["ok"] for r in reports)
    assert {r["arch"] for r in reports} == {80, 90}
    assert {r["kernel"] for r in reports} == {"fwd", "bwd_dkdv", "bwd_dq", "bwd_pre"}
    main = [r for r in reports if r["kernel"] != "bwd_pre"]
    # every constexpr value and dtype at least once, matrix instructions on both architectures
    assert {r["mask"] for r in main} == {0, 1, 2} and {r["causal"] for r in main} == {False, True}
    assert {r["dropout"] for r in main} == {False, True} and {r["varlen"] for r in main} == {False, True}
    assert {r["dtype"] for r in main} == {"float16", "bfloat16", "float32"}
    assert {r["mma"] for r in main if r["arch"] == 80} == {"mma"}
    assert "wgmma" in {r["mma"] for r in main if r["arch"] == 90}
    assert all(r["shared"] > 0 and r["spills"] == 0 for r in main)
    assert f"{len(reports)} passed, 0 failed" in done.stdout


def test_refuses_the_interpreter():
    done = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check"], capture_output=True, text=True,
        env=_env(TRITON_INTERPRET="1"), timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "run it without TRITON_INTERPRET=1" in done.stderr
