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


def test_a_length_without_its_fwd_bwd_pass_adds_fwd_and_bwd(tmp_path):
    # a sweep whose time budget ended before the fwd+bwd pass of L=16k timed fwd and bwd alone there
    points = [
        sweep_point("TRITON", 2.0, step="fwd", seq_len=16384), sweep_point("TRITON", 5.0, step="bwd", seq_len=16384),
        sweep_point("torch cuDNN", 1.5, step="fwd", seq_len=16384),
        sweep_point("torch cuDNN", 3.0, step="bwd", seq_len=16384),
        sweep_point("torch flash", 2.2, step="fwd", seq_len=16384),  # no bwd: not comparable, ignored
    ]  # fmt: skip
    path = tmp_path / "kernels_sweep.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "date": "2026-11-27", "points": points}))
    entry = preferences.from_sweep(path)["NVIDIA H200"]["float16/d128/full/L16384"]
    assert entry == {"ratio": round(7.0 / 4.5, 3), "torch_kernel": "cuDNN", "pass": "fwd and bwd", "date": "2026-11-27"}


def test_bfloat16_uses_the_float16_measurement_and_says_so():
    table = {"NVIDIA H200": {"float16/d128/causal/L4096": {"ratio": 1.5, "torch_kernel": "cuDNN", "pass": "fwd+bwd",
                                                           "date": "2026-11-27"}}}  # fmt: skip
    reason = preferences.measured_reason(table, "NVIDIA H200", torch.bfloat16, 128, True, 4096)
    assert reason == (
        "measured slower than torch's cuDNN on NVIDIA H200 (2026-11-27, on float16): 1.50x its time for fwd+bwd at "
        "this size"
    )
    assert preferences.measured_reason(table, "NVIDIA H200", torch.float32, 128, True, 4096) is None
    table["NVIDIA H200"]["bfloat16/d128/causal/L4096"] = {**table["NVIDIA H200"]["float16/d128/causal/L4096"],
                                                          "ratio": 1.2}  # fmt: skip
    assert "1.20x" in preferences.measured_reason(table, "NVIDIA H200", torch.bfloat16, 128, True, 4096)


def test_torch_tries_the_measured_kernel_first_among_those_enabled():
    everything = {"flash": True, "efficient": True, "cuDNN": True, "math": True}
    assert preferences.priority_order("cuDNN", everything) == ["cuDNN", "flash", "efficient", "math"]
    assert preferences.priority_order("efficient", {**everything, "math": False}) == ["efficient", "flash", "cuDNN"]
    # the caller restricted torch (torch.nn.attention.sdpa_kernel) to other kernels: torch's own choice stands
    assert preferences.priority_order("cuDNN", {**everything, "cuDNN": False}) is None
    assert preferences.priority_order("a kernel of a later torch", everything) is None


def test_the_recorded_table_names_torch_kernels_this_module_knows():
    """Every entry of the shipped measured_order.json can be turned into a priority order (a sweep's names)."""
    everything = dict.fromkeys(("flash", "efficient", "cuDNN", "math"), True)
    table = json.loads(preferences.FILE.read_text()) if preferences.FILE.exists() else {}
    for card, cases in table.items():
        for case, entry in cases.items():
            assert preferences.priority_order(entry["torch_kernel"], everything), (card, case)
            assert entry["ratio"] > preferences.SLOWER, (card, case)


def test_cpu_calls_run_torch_without_a_priority_block():
    q = torch.randn(1, 2, 8, 16)
    assert preferences.torch_priority(q, q, None, True) is None


def test_only_calls_of_the_measured_kind_follow_the_measurement():
    """The sweep times dense self-attention without a mask tensor or grouped heads: torch serves other calls with
    other kernels (a mask: neither flash nor cuDNN), so they keep the default order. Dropout takes the measurement
    without it (torch's flash and cuDNN kernels serve it; the fused kernels' dropout was measured slower still)."""
    from torch.nn.attention.bias import causal_upper_left

    from kernels import sliding_window

    q = torch.randn(2, 4, 64, 16)
    assert preferences.measured_kind(q, q, None, False) == (torch.float32, 16, False, 64)
    assert preferences.measured_kind(q, q, None, True) == (torch.float32, 16, True, 64)
    upper_left = causal_upper_left(64, 64)
    assert preferences.measured_kind(q, q, upper_left, False) == (torch.float32, 16, True, 64)
    assert preferences.measured_kind(q, q, torch.ones(64, 64, dtype=torch.bool), False) is None  # a mask tensor
    assert preferences.measured_kind(q, q, sliding_window(64, 64, 8), False) is None  # a band torch lacks
    assert preferences.measured_kind(q, q, None, False, dropout_p=0.1) == (torch.float32, 16, False, 64)
    assert preferences.measured_kind(q, q[:, :2], None, False) is None  # grouped heads
    assert preferences.measured_kind(q, q[:, :, :32], None, False) is None  # cross-attention, L != S
    assert preferences.measured_kind(q, None, None, False) is None


def test_lengths_below_1k_take_the_1k_measurement():
    """On a measured card, TRITON's forward + backward cost about the same host time at every 1k case: shorter
    calls lose more, so they follow the 1k measurement (docs/decisions.md); 4k and 16k keep their own."""
    table = {"NVIDIA H200": {"float16/d64/full/L1024": {"ratio": 3.07, "torch_kernel": "cuDNN", "pass": "fwd+bwd",
                                                        "date": "2026-11-28"}}}  # fmt: skip
    for length in (1, 77, 512, 1024, 4095):
        assert "3.07x" in preferences.measured_reason(table, "NVIDIA H200", torch.float16, 64, False, length)
    assert preferences.measured_reason(table, "NVIDIA H200", torch.float16, 64, False, 4096) is None


def test_a_new_sweep_replaces_only_the_cases_it_measured(tmp_path, monkeypatch):
    """``python -m kernels.preferences SWEEP.json`` updates the cases the sweep measured and keeps the others (a
    sweep of 1k and 4k keeps an earlier 16k measurement)."""
    file = tmp_path / "measured_order.json"
    old = {"ratio": 1.4, "torch_kernel": "cuDNN", "pass": "fwd and bwd", "date": "2026-11-27"}
    file.write_text(json.dumps({"NVIDIA H200": {"float16/d128/full/L16384": old, "float16/d128/full/L4096": old}}))
    monkeypatch.setattr(preferences, "FILE", file)
    points = [sweep_point("TRITON", 1.5), sweep_point("torch cuDNN", 1.0)]
    sweep = tmp_path / "kernels_sweep.json"
    sweep.write_text(json.dumps({"device": "NVIDIA H200", "date": "2026-11-28", "points": points}))
    assert preferences.main([str(sweep)]) == 0
    cases = json.loads(file.read_text())["NVIDIA H200"]
    assert cases["float16/d128/full/L16384"] == old
    assert cases["float16/d128/full/L4096"] == {"ratio": 1.5, "torch_kernel": "cuDNN", "pass": "fwd+bwd",
                                                "date": "2026-11-28"}  # fmt: skip
