"""The direct launch (`kernels.triton.launch`): a launch that ran before goes to its compiled kernel's launcher with
the arguments Triton's own ``JITFunction.run`` passes, and never where Triton would have specialised differently.

Without a GPU there is no compiled kernel: the key is checked against Triton's own specialisation of real launches
(`compile_check.jit_specialisation`, what the JIT computes), and the launch flow with stand-ins for the compiled
kernel, the JIT function and the device (``pytest -m cuda`` runs the real thing on a GPU)."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys

import pytest
import torch

from kernels.triton import compile_check, launch, ops


def _misaligned(shape, dtype):
    """A tensor of ``shape`` whose address is 2 elements past a 16-byte boundary."""
    n = torch.Size(shape).numel()
    return torch.randn(n + 8, dtype=dtype)[2 : 2 + n].view(shape)


def _forward(q_len=40, batch=2, dtype=torch.float16, misaligned=False, group=1):
    q = (_misaligned if misaligned else lambda s, d: torch.randn(s, dtype=d))((batch, 4, q_len, 64), dtype)
    kv = torch.randn(batch, 4 // group, 48, 64, dtype=dtype)
    fwd, _, _ = ops.forward_launch(
        q, kv, kv, None, None, 0.0, 0.125, -1, -1, False, False, ops._Layout(q, kv), tma=False
    )
    return fwd


def check_keys_against_tritons_specialisation() -> None:
    """Launches sharing a key share Triton's specialisation (signature, constexprs, alignment attributes): lengths
    that are multiples of 16 or not, 1 or not, a misaligned tensor, another dtype, grouped heads, batch sizes. Runs
    without the interpreter (the kernels must be real JITFunctions): `test_the_key_...` runs it in its own process."""
    import triton

    fn = ops.KERNELS["attn_fwd"]
    fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    launches = [
        _forward(), _forward(q_len=41), _forward(q_len=32), _forward(q_len=1), _forward(batch=1), _forward(batch=3),
        _forward(batch=16), _forward(dtype=torch.bfloat16), _forward(misaligned=True), _forward(group=2),
    ]  # fmt: skip
    seen = {}
    for fwd in launches:
        ours = launch.key("attn_fwd", 0, fwd.args, fwd.kwargs, config)
        _, signature, constexprs, attrs = compile_check.jit_specialisation(fn, fwd.args, {**fwd.kwargs, **config}, 90)
        theirs = (repr(signature), repr(constexprs), repr(attrs))
        assert seen.setdefault(ours, theirs) == theirs, "one key, two specialisations"
    assert len(set(seen.values())) >= 4, "the samples should differ in Triton's eyes"
    print(f"ok: {len(launches)} launches, {len(seen)} keys, {len(set(seen.values()))} specialisations")


def test_the_key_tells_apart_every_launch_triton_specialises_differently():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300,
                          env={**env, "TRITON_DEFAULT_FP_FUSION": "1"})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("ok: 10 launches")


def test_arg_key_classes():
    assert launch.arg_key(1) != launch.arg_key(2) != launch.arg_key(32)
    assert launch.arg_key(3) == launch.arg_key(5) and launch.arg_key(16) == launch.arg_key(48)
    assert launch.arg_key(2**31) != launch.arg_key(2**31 - 16)
    assert launch.arg_key(2**63) != launch.arg_key(2**62)
    assert launch.arg_key(True) != launch.arg_key(1) and launch.arg_key(0.5) == launch.arg_key(2.0)
    assert launch.arg_key(None) is None


class _Compiled:
    """A stand-in compiled kernel: records the launches made through ``compiled[grid](*args)``."""

    def __init__(self, calls, refuse=False):
        self.calls, self.refuse = calls, refuse

    def __getitem__(self, grid):
        def runner(*args):
            if self.refuse:
                raise TypeError("function takes 12 positional arguments")
            self.calls.append((grid, args))

        return runner


class _Fn:
    """A stand-in JITFunction: parameter names, and a binder that binds as Triton's does (or ``wrong``ly)."""

    def __init__(self, wrong=False):
        self.arg_names = ["X", "n", "BLOCK"]

        def binder(x, n, BLOCK, **options):
            return {"X": x, "n": n + 1 if wrong else n, "BLOCK": BLOCK}, [], options

        self.device_caches = {0: (None, None, None, None, binder)}


@pytest.fixture
def gpu_stand_in(monkeypatch):
    monkeypatch.setattr(launch, "_on_gpu", lambda args: True)
    monkeypatch.setattr(launch, "_device", lambda: 0)
    monkeypatch.setattr(launch, "_compiled", {})
    monkeypatch.setattr(launch, "_off", set())
    monkeypatch.setattr(launch, "ENABLED", True)


def test_a_launch_that_ran_before_goes_to_its_compiled_kernel(gpu_stand_in):
    calls = []
    x = torch.randn(4)
    args, kwargs, config = (x, 33), {"BLOCK": 16}, {"num_warps": 4}
    assert not launch.launch("k", (3,), args, kwargs, config)  # never seen: through Triton
    launch.remember("k", _Fn(), _Compiled(calls), args, kwargs, config)
    grid = lambda meta: (meta["n"] // meta["BLOCK"], 2)  # noqa: E731 - as the launchers' grids read meta-parameters
    assert launch.launch("k", grid, args, kwargs, config)
    assert calls == [((2, 2, 1), (x, 33, 16))]  # the grid padded to 3-D, every parameter in the signature's order
    # another integer class (a multiple of 16), or another tile: a new key, through Triton
    assert not launch.launch("k", grid, (x, 32), kwargs, config)
    assert not launch.launch("k", grid, args, kwargs, {"num_warps": 8})
    launch.forget("k")
    assert not launch.launch("k", grid, args, kwargs, config)


def test_arguments_unlike_tritons_switch_the_direct_launch_off(gpu_stand_in, caplog):
    calls = []
    args, kwargs = (torch.randn(4), 33), {"BLOCK": 16}
    with caplog.at_level(logging.WARNING, logger="kernels.triton.launch"):
        launch.remember("k", _Fn(wrong=True), _Compiled(calls), args, kwargs, {})
    assert "k" in launch._off and not launch.launch("k", (1,), args, kwargs, {})
    assert "launching through Triton from now on" in caplog.text and "binder" in caplog.text


def test_a_launcher_that_refuses_switches_the_direct_launch_off(gpu_stand_in, caplog):
    args, kwargs = (torch.randn(4), 33), {"BLOCK": 16}
    launch.remember("k", _Fn(), _Compiled([], refuse=True), args, kwargs, {})
    with caplog.at_level(logging.WARNING, logger="kernels.triton.launch"):
        assert not launch.launch("k", (1,), args, kwargs, {})  # the caller then launches through Triton
    assert "k" in launch._off and "12 positional arguments" in caplog.text


def test_cpu_launches_never_take_the_direct_path():
    args = (torch.randn(4), 33)
    launch.remember("k", _Fn(), _Compiled([]), args, {"BLOCK": 16}, {})
    assert not launch.launch("k", (1,), args, {"BLOCK": 16}, {})
    assert not any(k[0] == "k" for k in launch._compiled)


def test_pairs_of_distinct_specialisations_differ_in_key():
    """The contrapositive on integers alone, exhaustively over a range: values Triton treats alike may share a key,
    values it tells apart (1, multiples of 16, the rest) never do."""

    def triton_class(v):
        return "one" if v == 1 else "16" if v % 16 == 0 else "other"

    for a, b in itertools.combinations(range(-40, 80), 2):
        if triton_class(a) != triton_class(b):
            assert launch.arg_key(a) != launch.arg_key(b), (a, b)


if __name__ == "__main__":
    check_keys_against_tritons_specialisation()
