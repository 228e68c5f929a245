"""``make gpu-check``: everything a CPU cannot show, measured and checked on a GPU in one command (9.3 minutes at most).

Runs from a fresh copy of the repository with only what the GPU image has (torch, triton, pytest, numpy, matplotlib,
tqdm, pytorch-lightning, torchmetrics; no ruff, mkdocs, pytest-markdown-docs or jsonargparse, no network): the
package is put on ``PYTHONPATH``, nothing is installed, and no GPU setting is changed. Each step runs in its own
process with its own time budget, so a slow step cannot eat the others; what a step wrote before its budget ran out
is kept. Everything goes to ``$OUT`` when set, else ``bench-results/gpu-check/``; a short summary table is printed
last (only the end of the output may come back from a GPU machine).

Steps: 1. the environment; 2. ``pytest -m cuda`` (JUnit XML); 3. the host's time per attention call (forward +
backward at a tiny size, every backend); 4. every backend with attention dropout; 5. variable length against
padding; 6. the layers against ``torch.nn`` (fp16 autocast); 7. generation with and without key/value caches, and the
decode kernel's bandwidth against the card's copy rate; 8. a short training run of the byte-level GPT, profiled; 9.
the dK/dV kernel with each of its first tiles forced (does the static profile rank them as the GPU does?); 10. last,
with all the time the others left (at least 100 s), the kernel sweep (``python -m kernels.bench --sweep``, ended
cleanly by its ``--time-budget``).

Without CUDA (or with ``--dry-run``) every step still runs, on tiny CPU sizes, and says which GPU-only parts it
skipped and why: the command's own logic is tested that way in CI (tests/test_install.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 8 * 60 + 30  # a 15-minute lease: the machine's start, this, and a short rerun


@dataclasses.dataclass
class Step:
    name: str
    budget_s: int
    gpu_args: list[str]
    cpu_args: list[str]  # the same step on tiny CPU sizes (dry run)
    summarise: object  # (out_dir) -> dict of figures for the summary table
    status: str = "not run"
    seconds: float = 0.0
    figures: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    last: bool = False  # runs last and gets whatever time the others left (at least budget_s)


def _env_script() -> str:
    return r"""
import json, platform, subprocess, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(card=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    # which kernel torch's own SDPA picks for the sweep's headline shape (what a torch.nn layer runs), by its order
    q = torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.float16)
    try:
        names = {0: "math", 1: "flash", 2: "efficient", 3: "cuDNN"}
        info["torch_default_sdpa_d128_fp16_L4k"] = names.get(int(torch._fused_sdp_choice(q, q, q)), "other")
    except (AttributeError, RuntimeError, TypeError):
        info["torch_default_sdpa_d128_fp16_L4k"] = None
else:
    info.update(card=None, note="no CUDA device: GPU-only parts are skipped")
print(json.dumps(info))
"""


def _summarise_env(out: pathlib.Path) -> dict:
    path = out / "env.json"
    if not path.exists():
        return {}
    info = json.loads(path.read_text())
    keys = ("card", "sm_count", "memory_gib", "driver", "torch", "triton", "cuda_runtime")
    keys += ("torch_default_sdpa_d128_fp16_L4k",)
    return {k: info.get(k) for k in keys}


def _summarise_pytest(out: pathlib.Path) -> dict:
    path = out / "pytest-cuda.xml"
    if not path.exists():
        return _summarise_pytest_log(out / "logs" / "pytest-m-cuda.log")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in ET.parse(path).getroot().iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "failed_tests": failed[:20]}


def _summarise_pytest_log(log: pathlib.Path) -> dict:
    """The outcomes a ``-v`` log shows so far: pytest writes no JUnit XML when its budget kills it."""
    if not log.exists():
        return {}
    outcomes = re.findall(r"(PASSED|FAILED|ERROR|SKIPPED)\s+(tests/\S+)|(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED)",
                          log.read_text())  # fmt: skip
    results = {a_test or b_test: a_out or b_out for a_out, a_test, b_test, b_out in outcomes}
    counts = {
        word.lower(): sum(v == word for v in results.values()) for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")
    }
    failed = [name for name, v in results.items() if v in ("FAILED", "ERROR")]
    return {"finished (from the log)": len(results), **counts, "failed_tests": failed[:20]}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _summarise_sweep(out: pathlib.Path) -> dict:
    path = out / "sweep" / "kernels_sweep.json"
    if not path.exists():
        return {}
    points = json.loads(path.read_text())["points"]
    figures = {"points": len(points), "timed": sum(p["tflops"] is not None for p in points)}
    for step in ("fwd", "bwd"):  # the headline: d=128, fp16, L=4k
        row = [p for p in points if (p["step"], p["dtype"], p["head_dim"], p["seq_len"], p["causal"]) ==
               (step, "float16", 128, 4096, False)]  # fmt: skip
        ours = next((p["tflops"] for p in row if p["variant"] == "TRITON"), None)
        best = max((p["tflops"] for p in row if p["variant"] != "TRITON" and p["tflops"]), default=None)
        figures[f"{step} d128 fp16 L4k TFLOP/s TRITON / torch best"] = (
            f"{ours:.0f} / {best:.0f}" if ours and best else f"{ours} / {best}"
        )
    return figures


def _ms_by_name(path: pathlib.Path) -> dict:
    """``python -m kernels.bench``'s results: each variant's time, or why it did not run."""
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    return {r["name"]: (f"{r['ms']:.3f} ms" if r["ms"] else r["skipped"]) for r in results}


def _summarise_varlen(out: pathlib.Path) -> dict:
    return _ms_by_name(out / "varlen" / "sdpa_nested.json")


def _summarise_overhead(out: pathlib.Path) -> dict:
    return _ms_by_name(out / "overhead" / "sdpa_backends.json")


def _summarise_host(out: pathlib.Path) -> dict:
    path = out / "host" / "host_path.json"
    if not path.exists():
        return {}
    return {f"{name} us": us for name, us in json.loads(path.read_text())["us_per_call"].items() if "prep" not in name}


def _summarise_dropout(out: pathlib.Path) -> dict:
    return _ms_by_name(out / "dropout" / "sdpa_backends.json")


def _summarise_layers(out: pathlib.Path) -> dict:
    path = out / "layers" / "float16" / "layers.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {f"{r['case']} ours/torch": f"{r['ratio']:.2f}" for r in rows}


def _summarise_tiles(out: pathlib.Path) -> dict:
    return _ms_by_name(out / "tiles" / "tiles_attn_bwd_dkdv.json")


def _summarise_decode(out: pathlib.Path) -> dict:
    path = out / "decode" / "decode.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    figures = {r["case"]: f"{r['speedup']:.1f}x with cache" for r in data["rows"]}
    kernel = data.get("kernel") or {}
    if kernel:
        figures["decode kernel GB/s / copy GB/s"] = f"{kernel['decode_GBps']:.0f} / {kernel['copy_GBps']:.0f}"
    return figures


def _summarise_gpt(out: pathlib.Path) -> dict:
    path = out / "gpt" / "summary.json"
    if not path.exists():
        return {}
    s = json.loads(path.read_text())
    return {
        "median step ms": round(s.get("median_step_ms") or 0, 2),
        "tokens/s": round(s.get("tokens_per_s") or 0),
        "attention in profiler": ",".join(s.get("attention_backends_profiled") or []) or "none",
        "val loss": s.get("val_loss"),
    }


def steps(out: pathlib.Path) -> list[Step]:
    """The steps; each command's arguments on the GPU, then on tiny CPU sizes for a dry run."""
    py = sys.executable
    pytest = [
        py, "-m", "pytest", "-m", "cuda", "tests", "-v", "-p", "no:cacheprovider",
        "-o", "addopts=-ra --strict-markers", f"--junitxml={out / 'pytest-cuda.xml'}",
    ]  # fmt: skip
    # On the GPU the tests' time is Triton compiling each new kernel variant (several seconds each, on one CPU core):
    # pytest-xdist compiles in parallel processes where the image has it, pytest-timeout turns a hung test into a
    # failure with a traceback instead of the step's whole budget.
    pytest_gpu = [*pytest, *(["-n", str(min(12, os.cpu_count() or 1))] if _has("xdist") else [])]
    pytest_gpu += ["--timeout", "150"] if _has("pytest_timeout") else []
    sweep = [py, "-m", "kernels.bench", "--sweep", "--out-dir", str(out / "sweep")]
    # Compiling and tuning TRITON for each new dtype/head dim/causal takes most of a shape's time: the lengths the
    # preferences need most (4k, 1k) before longer ones (kernels.bench --sweep by hand), and head dim 64 (the common
    # 8 x 64 heads; not measured by the first run) before 128 (measured once: re-measured for reproducibility).
    sweep_gpu = "--seq-lens 4096 1024 --head-dims 64 128 --dtypes float16 bfloat16 --min-run-time 0.1"
    sweep_gpu += " --rounds 2 --time-budget {sweep_seconds} --variants TRITON"
    sweep_cpu = "--device cpu --seq-lens 16 32 --tokens 64 --heads 1 --head-dims 16 --dtypes float32"
    sweep_cpu += " --min-run-time 0.01 --rounds 1"
    torch_kernels = ["torch flash", "torch efficient", "torch cuDNN"]
    varlen = [py, "-m", "kernels.bench", "--nested", "--train", "--out-dir", str(out / "varlen")]
    varlen_gpu = "--batch 64 --seq-len 1024 --heads 16 --head-dim 128 --min-run-time 0.3"
    varlen_cpu = "--device cpu --batch 4 --seq-len 32 --heads 2 --head-dim 8 --min-run-time 0.01"
    decode = [py, "-m", "layers.bench", "--decode", "--out-dir", str(out / "decode")]
    decode_gpu = "--dtype float16 --decode-batches 8 --new-tokens 64 --rounds 2 --min-run-time 0.2 --no-decode-compile"
    decode_cpu = "--device cpu --decode-batches 2 --new-tokens 4 --block-size 32 --d-model 32 --nhead 2 --rounds 1"
    decode_cpu += " --min-run-time 0.01 --no-decode-compile"  # compiling would take the step's whole budget
    # Does the static profile rank tiles as the GPU does? dK/dV (the backward's larger half) with its first tiles
    # forced, kept by the spill table or not (kernels.bench.tile_ab)
    tiles = [py, "-m", "kernels.bench", "--tiles", "attn_bwd_dkdv", "--out-dir", str(out / "tiles")]
    tiles_gpu = "--dtype float16 --batch 4 --heads 16 --seq-len 4096 --head-dim 128 --rounds 2 --min-run-time 0.2"
    tiles_cpu = "--device cpu --batch 1 --heads 1 --seq-len 32 --head-dim 16 --rounds 1 --min-run-time 0.01"
    # Host time per call: at a tiny size every variant's time is what the host spends launching it (measured
    # 2026-11-28: TRITON's forward + backward ~2 ms a call, flat across L=1k shapes, against cuDNN's ~0.5 ms)
    overhead = [py, "-m", "kernels.bench", "--train", "--out-dir", str(out / "overhead")]
    overhead_gpu = "--dtype float16 --batch 1 --heads 2 --seq-len 128 --head-dim 64 --rounds 3 --min-run-time 0.1"
    overhead_cpu = "--device cpu --batch 1 --heads 1 --seq-len 16 --head-dim 16 --rounds 1 --min-run-time 0.01"
    # Where that host time goes: each call timed with its launches, and a Python profile of TRITON's forward + backward
    host = [py, "-m", "kernels.bench.host_path", "--out-dir", str(out / "host"), "--cprofile", str(out / "host" /
            "cprofile.txt")]  # fmt: skip
    host_gpu, host_cpu = "--device cuda --number 200 --repeat 3", "--number 5 --repeat 1"
    # The fused kernels with dropout against torch's (one Philox call per four elements since 2026-11-28; before, the
    # forward with dropout took 4.1x its time without on an H200)
    dropout = [py, "-m", "kernels.bench", "--train", "--dropout", "0.1", "--out-dir", str(out / "dropout")]
    dropout_gpu = "--dtype float16 --batch 4 --heads 16 --seq-len 4096 --head-dim 64 --rounds 3 --min-run-time 0.1"
    dropout_cpu = "--device cpu --batch 1 --heads 1 --seq-len 16 --head-dim 16 --rounds 1 --min-run-time 0.01"
    gpt = [py, "-m", "lightning_examples.short_run", "--out-dir", str(out / "gpt")]
    gpt_cpu = "--device cpu --steps 4 --block-size 32 --batch-size 4 --n-layer 1 --n-embd 48 --max-bytes 50000"
    # fp16 only (the GPT step trains in bf16), the four headline cases: each case compiles its own kernel variants
    layers = [py, "-m", "layers.bench", "--out-dir", str(out / "layers" / "float16"), "--no-compile", "--no-busy"]
    layers_gpu = "--autocast float16 --min-run-time 0.2 --rounds 3 --batch 32 --seq-len 512 --d-model 512"
    # and the padded cases with ours packing the real tokens (skip_padding(True); the default on a GPU computes over
    # the padded batch since packing took 1.70x torch's time on 2026-11-28): does packing pay on this card?
    layers_gpu += " --cases train-dense infer-dense train-padded infer-padded train-padded-packed infer-padded-packed"
    layers_cpu = "--device cpu --batch 2 --seq-len 16 --d-model 32 --nhead 2 --dim-feedforward 64"
    layers_cpu += " --min-run-time 0.01 --rounds 1 --cases train-dense train-padded"
    return [
        Step("environment", 15, [py, "-c", _env_script()], [py, "-c", _env_script()], _summarise_env),
        Step("pytest -m cuda", 185, pytest_gpu, pytest, _summarise_pytest),
        Step(
            "launch overhead",
            40,  # 20 s ran out on 2026-11-28 (imports, first compiles, 3 rounds of ~2.3 s)
            [*overhead, *overhead_gpu.split()],
            [*overhead, *overhead_cpu.split()],
            _summarise_overhead,
        ),
        Step("host path", 45, [*host, *host_gpu.split()], [*host, *host_cpu.split()], _summarise_host),
        Step("dropout", 30, [*dropout, *dropout_gpu.split()], [*dropout, *dropout_cpu.split()], _summarise_dropout),
        Step("variable length", 40, [*varlen, *varlen_gpu.split()], [*varlen, *varlen_cpu.split()], _summarise_varlen),
        Step("layers float16", 75, [*layers, *layers_gpu.split()], [*layers, *layers_cpu.split()], _summarise_layers),
        Step("decoding", 25, [*decode, *decode_gpu.split()], [*decode, *decode_cpu.split()], _summarise_decode),
        Step("GPT training", 50, [*gpt, "--steps", "300"], [*gpt, *gpt_cpu.split()], _summarise_gpt),
        Step("tile A/B", 35, [*tiles, *tiles_gpu.split()], [*tiles, *tiles_cpu.split()], _summarise_tiles),
        # last, with what the others left: the sweep ends itself cleanly at its --time-budget ({sweep_seconds})
        Step(
            "kernel sweep",
            100,
            [*sweep, *sweep_gpu.split(), *torch_kernels],
            [*sweep, *sweep_cpu.split()],
            _summarise_sweep,
            last=True,
        ),
    ]


def _cuda_available(env: dict) -> bool:
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    done = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=120)
    return done.stdout.strip() == "True"


def run_step(step: Step, args: list[str], out: pathlib.Path, env: dict) -> None:
    log = out / "logs" / (re.sub(r"[^a-z0-9]+", "-", step.name.lower()).strip("-") + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"\n=== {step.name} (budget {step.budget_s} s): {' '.join(args)[:200]}", flush=True)
    with log.open("w") as f:
        try:
            done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=step.budget_s)
            step.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            step.status = f"out of budget ({step.budget_s} s)"
    step.seconds = time.monotonic() - start
    if step.name == "environment" and log.exists():
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        if lines:
            (out / "env.json").write_text(json.dumps(json.loads(lines[-1]), indent=2))
    try:
        step.figures = step.summarise(out)
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as err:  # a partial output: say so
        step.figures = {"summary": f"unreadable output: {err}"}
    tail = log.read_text().splitlines()[-8:] if log.exists() else []
    print("\n".join("    " + line[:160] for line in tail), flush=True)


def summary_table(all_steps: list[Step], dry: bool, reason: str) -> str:
    lines = ["", "=" * 100, f"make gpu-check summary{' (DRY RUN: ' + reason + ')' if dry else ''}", "=" * 100]
    lines.append(f"{'step':<20} {'status':<26} {'seconds':>8}  figures")
    for s in all_steps:
        figures = "; ".join(f"{k}: {v}" for k, v in s.figures.items() if k != "failed_tests") or "-"
        lines.append(f"{s.name:<20} {s.status:<26} {s.seconds:>8.1f}  {figures[:400]}")
        failed = s.figures.get("failed_tests")
        if failed:
            lines += [f"{'':<20} failed: {name}" for name in failed]
        if s.note:
            lines.append(f"{'':<20} {s.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="walk every step on tiny CPU sizes")
    args = parser.parse_args(argv)
    out = pathlib.Path(os.environ.get("OUT") or ROOT / "bench-results" / "gpu-check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["MPLBACKEND"] = "Agg"
    cuda = _cuda_available(env)
    dry = args.dry_run or not cuda
    reason = "--dry-run" if args.dry_run else "no CUDA device"
    all_steps = steps(out)
    started = time.monotonic()
    for step in all_steps:
        left = TOTAL_BUDGET_S - (time.monotonic() - started)
        step.budget_s = int(max(step.budget_s, left) if step.last else min(step.budget_s, max(10, left)))
        seconds = str(max(10, step.budget_s - 15))  # the sweep stops itself before its step's budget runs out
        run_step(step, [a.replace("{sweep_seconds}", seconds) for a in (step.cpu_args if dry else step.gpu_args)],
                 out, env)  # fmt: skip
        if dry and step.name != "environment":
            step.note = f"GPU part skipped ({reason}): ran on tiny CPU sizes instead"
    table = summary_table(all_steps, dry, reason)
    record = {
        "dry_run": dry, "reason": reason if dry else None, "total_seconds": round(time.monotonic() - started, 1),
        "steps": [{k: v for k, v in dataclasses.asdict(s).items() if k not in ("summarise", "gpu_args", "cpu_args")}
                  for s in all_steps],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "summary.txt").write_text(table + "\n")
    print(table, flush=True)
    print(f"\nall outputs: {out}")
    return 0 if all(s.status == "ok" for s in all_steps) else 1


if __name__ == "__main__":
    sys.exit(main())
