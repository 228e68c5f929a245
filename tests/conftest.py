"""Test-session set-up that must happen before `kernels` is imported.

Without a GPU, the fused Triton kernels run under the Triton interpreter (numerics on CPU; TRITON-NOTES.md):
it is chosen when ``@triton.jit`` decorates, so the variable is set here, before any test imports kernels.
The offline compile check runs in its own process without it (tests/kernels/test_compile_check.py).
"""

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice about the default

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # pytest-xdist's workers share the cores: torch's default (every core per process) made OpenMP's threads wait for
    # each other (a test of many small operations took 26 s instead of 2 with two workers on two cores)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def two_threads():
    """torch on two threads for the test (the busy-machine tests take one away), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test's random inputs from its own seed (its id's checksum): the same in every run, whatever ran before
    it in its process (pytest-xdist distributes tests differently from run to run), and different between tests."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _fresh_backward_plans():
    """The launchers decide a backward's launches once per kind of call (`ops._backward_plan`); tests that replace
    the deciding functions (`ops.dkdv_parts`, `ops.dq_parts`, the spill table) must not see another test's plans."""
    import sys

    ops = sys.modules.get("kernels.triton.ops")
    if ops is not None:
        ops._backward_plan.cache_clear()
    yield
    if ops is not None:
        ops._backward_plan.cache_clear()
