"""The default order on a GPU follows measurements: kernels.preferences turns a sweep's JSON into the cases where
TORCH goes first, and the reason explain shows. (No GPU here: the table and the lookup are exercised directly.)"""

from __future__ import annotations

import json

import torch

from kernels import preferences


def sweep_point(
    variant, ms, vs_best_torch=None, step="fwd+bwd", dtype="float16", head_dim=128, causal=False, seq_len=4096
):
    return {"variant": variant, "step": step, "dtype": dtype, "head_dim": head_dim, "causal": causal,
            "seq_len": seq_len, "batch": 4, "ms": ms, "tflops": 1.0, "spread": 0.01, "vs_best_torch": vs_best_torch,
            "skipped": None}  # fmt: skip


def test_from_sweep_keeps_the_cases_where_triton_is_slower(tmp_path):
    points = [
        sweep_point("TRITON", 1.3, 1.3), sweep_point("torch flash", 1.0, 1.0), sweep_point("torch cuDNN", 1.1, 1.1),
        sweep_point("TRITON", 0.9, 0.9, causal=True), sweep_point("torch flash", 1.0, 1.0, causal=True),
        sweep_point("TRITON", 1.02, 1.02, head_dim=64), sweep_point("torch flash", 1.0, 1.0, head_dim=64),
    ]  # fmt: skip
    path = tmp_path / "kernels_sweep.json"
    path.write_text(json.dumps({"device": "NVIDIA H100", "date": "2026-11-27", "points": points}))
    table = preferences.from_sweep(path)
    assert list(table) == ["NVIDIA H100"]
    cases = table["NVIDIA H100"]
    assert list(cases) == ["float16/d128/full/L4096"]  # faster or within noise elsewhere: TRITON stays first
    assert cases["float16/d128/full/L4096"]["torch_kernel"] == "flash"
    reason = preferences.measured_reason(table, "NVIDIA H100", torch.float16, 128, False, 5000)
    assert (
        reason
        == "measured slower than torch's flash on NVIDIA H100 (2026-11-27): 1.30x its time for fwd+bwd at this size"
    )
    assert preferences.measured_reason(table, "NVIDIA H100", torch.float16, 128, True, 5000) is None
    assert preferences.measured_reason(table, "NVIDIA A100", torch.float16, 128, False, 5000) is None  # another card


def test_cpu_calls_and_unmeasured_cards_keep_the_default_order():
    q = torch.randn(1, 2, 8, 16)
    assert preferences.torch_first(q, q, None, False) is None
