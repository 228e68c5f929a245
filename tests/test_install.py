"""The environments the project runs in: the GPU image (``make gpu-check`` without a GPU, in an environment with exactly
the GPU image's packages: no ruff, mkdocs, pytest-markdown-docs or jsonargparse) and the core install (torch and
triton only). Every step of the dry run runs on tiny CPU sizes, says what it skipped, writes its outputs, and the
summary table comes last. (On a GPU the same command measures; see docs/gpu.md.)"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their string annotations through it
    spec.loader.exec_module(module)
    return module


def test_dry_run_in_the_gpu_images_package_set(tmp_path):
    python = _load("gpu_image_env").build(tmp_path / "env")
    dev_only = ("ruff", "mkdocs", "pytest_markdown_docs", "jsonargparse")
    probe = f"import importlib.util as u; print([m for m in {dev_only!r} if u.find_spec(m)])"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    done = subprocess.run(
        [python, str(ROOT / ".ci" / "gpu_check.py"), "--dry-run"], capture_output=True, text=True, timeout=600,
        env={**env, "OUT": str(out)}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    tail = done.stdout.strip().splitlines()
    summary = tail.index(next(line for line in tail if line.startswith("make gpu-check summary (DRY RUN")))
    assert all(not line.startswith("===") or "summary" in line or set(line) == {"="} for line in tail[summary:])
    record = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert set(steps) == {"environment", "pytest -m cuda", "launch overhead", "host path", "dropout", "kernel sweep",
                          "variable length", "layers float16", "decoding", "GPT training", "tile A/B"}  # fmt: skip
    assert all(s["status"] == "ok" for s in steps.values()), {n: s["status"] for n, s in steps.items()}
    assert all("GPU part skipped" in s["note"] for n, s in steps.items() if n != "environment")
    for path in ("env.json", "pytest-cuda.xml", "sweep/kernels_sweep.json", "varlen/sdpa_nested.json",
                 "layers/float16/layers.json", "decode/decode.json", "gpt/summary.json", "summary.txt",
                 "tiles/tiles_attn_bwd_dkdv.json", "overhead/sdpa_backends.json",
                 "dropout/sdpa_backends.json", "host/host_path.json", "host/cprofile.txt"):  # fmt: skip
        assert (out / path).exists(), path
    assert steps["host path"]["figures"]["TRITON forward + backward us"] > 0
    assert steps["pytest -m cuda"]["figures"]["errors"] == 0  # pytest starts without pytest-markdown-docs
    assert json.loads((out / "gpt" / "summary.json").read_text())["attention_backends_profiled"] == ["TORCH"]
    assert "TRITON" in (out / "sweep" / "kernels_sweep.json").read_text()  # listed, with the reason it did not run


def test_a_pytest_step_cut_by_its_budget_is_summarised_from_its_log(tmp_path):
    """pytest writes its JUnit XML only at the end: a killed run's outcomes come from the ``-v`` log (serial and
    pytest-xdist formats), failures named."""
    gpu_check = _load("gpu_check")
    log = tmp_path / "logs" / "pytest-m-cuda.log"
    log.parent.mkdir()
    log.write_text(
        "tests/kernels/test_cuda.py::test_large_shapes[False-64-dtype0] PASSED    [  2%]\n"
        "tests/kernels/test_cuda.py::test_masks[dtype0] FAILED [  4%]\n"
        "[gw3] [  7%] PASSED tests/kernels/test_cuda.py::test_every_kept_tile_is_correct[0-64-attn_fwd] \n"
        "[gw1] [  9%] SKIPPED tests/kernels/test_cuda.py::test_every_kept_tile_is_correct[2-64-attn_fwd] \n"
        "tests/kernels/test_cuda.py::test_causal_with_l_different_from_s[300-700] \n"  # running when killed
    )
    figures = gpu_check._summarise_pytest(tmp_path)
    assert figures == {"finished (from the log)": 4, "passed": 2, "failed": 1, "error": 0, "skipped": 1,
                       "failed_tests": ["tests/kernels/test_cuda.py::test_masks[dtype0]"]}  # fmt: skip


def test_core_install_needs_only_torch_and_triton(tmp_path):
    """``pip install fusedlayers`` (no extras): layers and kernels import and the README's layer example runs, with
    nothing but torch and triton installed (no pytorch-lightning, tqdm or matplotlib)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split(";")[0].strip() for d in project["dependencies"]] == ["torch", "triton"]
    python = _load("gpu_image_env").build(tmp_path / "env", ["torch", "triton"])
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Example")[1].split("```python")[1].split("```")[0]
    script = "import importlib.util as u\nassert not u.find_spec('pytorch_lightning') and not u.find_spec('tqdm')\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([python, "-c", script + example], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_importing_a_main_module_runs_nothing(monkeypatch):
    """The test collector imports every module of the packages (docstring examples): a ``__main__`` that ran its
    command on import would start a benchmark or a training run inside the test suite."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "argv", ["pytest", "--not-an-option"])  # a command that ran would exit on this
    mains = sorted(p for pkg in ("kernels", "layers", "lightning_examples") for p in (ROOT / pkg).rglob("__main__.py"))
    assert len(mains) >= 3
    for path in mains:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        sys.modules.pop(name, None)
        importlib.import_module(name)
