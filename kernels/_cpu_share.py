"""How many of this machine's cores other processes leave free, measured, so the packed path does not oversubscribe.

The variable-length path on CPU runs many small operations (gathers, one dense call per bucket of lengths), each a
parallel region whose threads wait for each other at the end. When another process keeps the cores busy, one of
those threads is often descheduled, and every region then waits for it: measured on 2 cores beside a matmul job, a
padded training step of `layers.bench` flipped between 1.1 s and 5.5 s (torch's own padded step: 2.4 s). Run on as
many threads as there are cores the other processes leave free, the same step took 1.0-1.5 s
(`docs/decisions.md`, "Busy machines").

`free_threads` reads the machine's CPU time (``/proc/stat``) and this process's (``/proc/self/stat``) at most every
`INTERVAL_S` seconds; what other processes used in between, in cores, is what they took from us. Where ``/proc`` is
missing (not Linux), it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch

INTERVAL_S = 0.5
_lock = threading.Lock()
_last: tuple[float, int, int, int] | None = None  # (monotonic s, all jiffies, busy jiffies, own jiffies)
_others_cores = 0.0


def _sample() -> tuple[float, int, int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait; steal counts as taken
    total = sum(fields[:8])
    return time.monotonic(), total, total - idle, int(own[11]) + int(own[12])  # utime + stime


def others_cores() -> float:
    """Cores' worth of CPU time other processes (and the hypervisor) used lately; 0 where it cannot be read."""
    global _last, _others_cores
    now = time.monotonic()
    if _last is not None and now - _last[0] < INTERVAL_S:
        return _others_cores
    with _lock:
        sample = _sample()
        if sample is None:
            return 0.0
        if _last is not None and sample[1] > _last[1]:
            cores = os.cpu_count() or 1
            all_j, busy_j, own_j = (sample[i] - _last[i] for i in (1, 2, 3))
            _others_cores = max(0.0, (busy_j - own_j) / all_j * cores)
        _last = sample
    return _others_cores


def free_threads() -> int:
    """Threads for this process's small parallel operations: torch's count, less the cores others keep busy."""
    threads = torch.get_num_threads()
    return max(1, min(threads, int((os.cpu_count() or 1) - others_cores() + 0.5)))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Limit:
    """The thread limit of one call's backward: set when autograd reaches the call's output, lifted when it has
    passed the call's inputs. A backward that raised in between leaves it set; the next call lifts it."""

    active: ClassVar[list[_Limit]] = []  # limits set and not yet lifted

    def __init__(self, n: int):
        self.n, self.old = n, None

    def set(self) -> None:
        if self.old is None:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)
            _Limit.active.append(self)

    def lift(self) -> None:
        if self.old is not None:
            torch.set_num_threads(self.old)
            self.old = None
            _Limit.active.remove(self)


class _AtOutput(torch.autograd.Function):
    """Identity; its backward runs before the backward of the operations that made its input: limit there."""

    @staticmethod
    def forward(ctx, limit, out):
        ctx.limit = limit
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        ctx.limit.set()
        # lifted where the inputs' gradients are complete (`_AtInputs`), at the latest when this backward ends: a
        # call whose inputs need no gradient (a stack of layers on data) has only its parameters' gradients
        torch.autograd.Variable._execution_engine.queue_callback(ctx.limit.lift)
        return None, grad


class _AtInputs(torch.autograd.Function):
    """Identity on the call's inputs; its backward runs once their gradients are complete: lift the limit there."""

    @staticmethod
    def forward(ctx, limit, *inputs):
        ctx.limit = limit
        return tuple(t.view_as(t) for t in inputs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.limit.lift()
        return None, *grads


def on_free_threads(run: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """``run(*inputs)``, forward and backward, on `free_threads` threads where other processes keep cores busy;
    unchanged on a quiet machine, on CUDA, and while tracing.

    The backward limit comes from two identity autograd nodes around the call, not from a graph of its own, so
    ``retain_graph``, double backward and ``torch.autograd.grad`` behave exactly as without it. It is set when the
    backward reaches the output and lifted when the inputs' gradients are complete, or, where no input needs one
    (a stack of layers on data: only its parameters do), when that backward ends.

    ``run`` may be a whole stack of layers (`layers`' packed paths): calls inside it see the limit already set and
    run as they are.
    """
    if inputs[0].device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return run(*inputs)
    if _Limit.active and _outside_backward():  # left set by a backward that raised
        for limit in list(_Limit.active):
            limit.lift()
    n = free_threads()
    if n >= torch.get_num_threads():
        return run(*inputs)
    if not torch.is_grad_enabled():
        with threads(n):
            return run(*inputs)
    limit = _Limit(n)
    needing = [i for i, t in enumerate(inputs) if t.requires_grad]
    if needing:  # only those: an input passed through would need a gradient it does not need (more work)
        passed = iter(_AtInputs.apply(limit, *(inputs[i] for i in needing)))
        inputs = tuple(next(passed) if i in needing else t for i, t in enumerate(inputs))
    with threads(n):
        out = run(*inputs)
    return _AtOutput.apply(limit, out) if out.requires_grad else out


def _outside_backward() -> bool:
    """Whether no backward is running on this thread (True where torch cannot say)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is None or task_id() == -1
