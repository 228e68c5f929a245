"""Launching a compiled kernel again without Triton's per-call argument handling.

On every launch Triton's ``JITFunction.run`` binds the arguments by name, specialises each one, turns the result
into a cache key string and looks the compiled kernel up; for this package's kernels (40-60 arguments: strides,
lengths, flags) that is most of the host's time per call. Measured on an H200 host (2026-11-28, triton 3.6): a
fused forward took ~0.7 ms of host time against 44 us on the device, and at L=1k every forward + backward cost
~2 ms whatever the head dim or causality, where torch's cuDNN kernel took 0.5-1.1 ms (docs/benchmarks.md).

`launch` does what ``JITFunction.run`` does for a launch it has compiled before, the way torch inductor's launchers
do: it keys the launch on every fact Triton specialises on (`arg_key`: each tensor's dtype and 16-byte alignment,
each integer's being 1, a multiple of 16, or past 32 bits; the constexprs; the tile; the device), and launches that
compiled kernel (``compiled[grid](*args)``, Triton's own launch of a compiled kernel) with the same arguments
``JITFunction.run`` passes it. A launch with a new key goes through
Triton (`remember` then records it); `remember` first checks that the arguments it will pass equal those Triton's own
binder produces for that launch, and where they do not (another Triton's internals), or where a direct launch
raises, the direct path is switched off for that kernel with a warning. ``FUSEDLAYERS_DIRECT_LAUNCH=0`` switches it
off altogether. CUDA only: the interpreter has no compiled kernels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

ENABLED = os.environ.get("FUSEDLAYERS_DIRECT_LAUNCH", "1") != "0"
_INT32 = range(-(2**31), 2**31)

# launch key -> (compiled kernel, the JITFunction's parameter names); kernels whose direct launch failed
_compiled: dict[tuple, tuple[object, tuple[str, ...]]] = {}
_off: set[str] = set()


def arg_key(value: object) -> object:
    """What Triton's JIT may specialise a non-constexpr argument on, or more: a tensor's dtype and whether its address
    is 16-byte aligned; an integer's being 1, a multiple of 16, and its type's width (32 bits, signed or unsigned 64);
    a float's type; None."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value == 1, value % 16 == 0, value in _INT32, value >= 2**63  # i32 / i64 / u64
    if isinstance(value, float):
        return "float"
    return value  # None, or anything else: its value


def key(kernel: str, device: int, args: tuple, kwargs: dict, config: dict) -> tuple:
    """The key of a launch: two launches with the same key run the same compiled kernel."""
    return kernel, device, tuple(map(arg_key, args)), tuple(kwargs.items()), tuple(config.items())


def _values(names: tuple[str, ...], args: tuple, kwargs: dict, config: dict) -> tuple[dict, list]:
    named = {**dict(zip(names, args, strict=False)), **kwargs, **config}  # args: the leading parameters
    return named, [named[name] for name in names]


def _on_gpu(args: tuple) -> bool:
    return args[0].is_cuda


def _device() -> int:
    from triton.runtime.driver import driver

    return driver.active.get_current_device()


def launch(kernel: str, grid: Callable | tuple, args: tuple, kwargs: dict, config: dict) -> bool:
    """Launch ``kernel`` directly if a launch with the same key ran before (`remember`); False where it did not, or
    where the direct path is off (the caller then launches through Triton)."""
    if not ENABLED or kernel in _off or not _on_gpu(args):
        return False
    entry = _compiled.get(key(kernel, _device(), args, kwargs, config))
    if entry is None:
        return False
    compiled, names = entry
    named, values = _values(names, args, kwargs, config)
    grid = grid(named) if callable(grid) else grid
    grid = (*grid, 1, 1)[:3]
    try:
        # the compiled kernel's own launch (what JITFunction.run ends with): the current stream, the launch hooks
        compiled[grid](*values)
    except (TypeError, ValueError, AttributeError, IndexError) as err:  # the launcher refused the arguments
        _switch_off(kernel, err)
        return False
    return True


def remember(kernel: str, fn, compiled, args: tuple, kwargs: dict, config: dict) -> None:
    """Record the kernel Triton compiled and launched for these arguments (``fn``: the JITFunction, ``config``: the
    tile's meta-parameters and options), after checking that `launch` would pass it what Triton's binder does."""
    if not ENABLED or kernel in _off or compiled is None or not _on_gpu(args):
        return
    try:
        device = _device()
        compiled = compiled.result() if hasattr(compiled, "result") else compiled
        names = tuple(fn.arg_names)
        _, values = _values(names, args, kwargs, config)
        binder = fn.device_caches[device][4]
        bound, _, _ = binder(*args, **kwargs, **config)
        theirs = list(bound.values())
        if len(theirs) != len(values) or any(a is not b and a != b for a, b in zip(values, theirs, strict=True)):
            raise ValueError("the arguments differ from those Triton's binder produces")
        if not hasattr(compiled, "__getitem__"):
            raise AttributeError("the compiled kernel cannot be launched as compiled[grid](*args)")
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, RuntimeError) as err:
        _switch_off(kernel, err)  # RuntimeError: e.g. comparing two distinct tensors
        return
    _compiled[key(kernel, device, args, kwargs, config)] = (compiled, names)


def forget(kernel: str) -> None:
    """Drop the recorded launches of ``kernel`` (a forced tile: `tiles.forced`)."""
    for k in [k for k in _compiled if k[0] == kernel]:
        del _compiled[k]


def _switch_off(kernel: str, err: Exception) -> None:
    _off.add(kernel)
    log.warning("%s: launching through Triton from now on (a direct launch does not fit this Triton: %s)", kernel, err)
