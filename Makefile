# Two commands, each doing all of its own set-up on a fresh machine that has only Python:
#   make demo   train a byte-level GPT on the standard library's source for ~2 minutes, profiled
#   make test   lint, build the docs (strict), compile the kernels under triton 3.6, run the whole test suite
# and: make bench (the benchmarks); make gpu-check (on a GPU machine: no install step, see docs/gpu.md).
# Both are idempotent: a virtual environment is (re)built only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel by default (it lies on this project's machines' disk); on a GPU machine use e.g.
#   make test TORCH_SPEC='torch==2.11.0'
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The GPU machines run triton 3.6 (CI: 3.9): the kernels' offline compile check runs under both.
VENV36 ?= .venv-triton36
STAMP36 := $(VENV36)/.installed

.PHONY: demo bench test lint docs compile-check-triton36 gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

$(STAMP36): pyproject.toml
	test -x $(VENV36)/bin/python || $(PYTHON) -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" "triton==3.6.0" numpy
	touch $(STAMP36)

demo: $(STAMP)
	$(BIN)/python -m lightning_examples fit --config demo

bench: $(STAMP)
	$(BIN)/python -m kernels.bench
	$(BIN)/python -m kernels.bench --nested
	$(BIN)/python -m kernels.bench --window 128
	$(BIN)/python -m layers.bench
	$(BIN)/python -m layers.bench --decode

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site  # not --quiet: with it, strict mode counts no warnings

compile-check-triton36: $(STAMP36)
	PYTHONPATH=. TRITON_DEFAULT_FP_FUSION=1 $(VENV36)/bin/python -m kernels.compile_check

# in parallel processes, one per core (pytest-xdist; the compile check's module in one of them: --dist loadgroup)
test: lint docs compile-check-triton36
	$(BIN)/python -m pytest -n auto --dist loadgroup

# On a GPU machine, from a fresh copy: only what the GPU image has, nothing installed, GPU settings untouched.
gpu-check:
	$(PYTHON) .ci/gpu_check.py

clean:
	rm -rf $(VENV) $(VENV36) .site bench-results demo-output lightning_logs .pytest_cache .ruff_cache
