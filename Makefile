# Two commands, each doing all of its own set-up on a fresh machine that has only Python:
#   make demo   train a byte-level GPT on the standard library's source for ~2 minutes, profiled
#   make test   lint, build the docs (strict) and run the whole test suite
# and the benchmarks: make bench (attention backends, nested batches, layers against torch.nn).
# Both are idempotent: the virtual environment is (re)built only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel by default (it lies on this project's machines' disk); on a GPU machine use e.g.
#   make test TORCH_SPEC='torch==2.11.0'
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo bench test lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lightning_examples fit --config demo

bench: $(STAMP)
	$(BIN)/python -m kernels.bench
	$(BIN)/python -m kernels.bench --nested
	$(BIN)/python -m layers.bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir .site

test: lint docs
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .site bench-results demo-output lightning_logs .pytest_cache .ruff_cache
