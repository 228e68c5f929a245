"""What the attention benchmarks share: the FLOP formula, backend selection for one timed case, the seed's padded
lengths, and how a case that cannot run is reported."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel as torch_sdpa_kernel

from ..backends import Backend, sdpa_kernel

__all__ = [
    "LENGTH_KINDS",
    "TRAIN_FLOPS_FACTOR",
    "Case",
    "attention_flops",
    "first_reasons",
    "only",
    "padded_lengths",
    "timed_step",
    "torch_refusal",
]

TRAIN_FLOPS_FACTOR = 3.5  # forward + backward FLOPs / forward FLOPs


def attention_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs of attention: two (L x S x E) matmuls, 2 FLOPs per multiply-add; causal halves it."""
    flops = 4.0 * batch * heads * q_len * k_len * head_dim
    return flops / 2 if causal else flops


@dataclasses.dataclass
class Case:
    name: str
    context: Callable[[], contextlib.AbstractContextManager]
    call: Callable[[], object]  # one timed step (forward, or forward + backward)
    refusal: str | None = None  # why torch may refuse it, where torch's own message does not say
    unavailable: str | None = None  # why it cannot run here at all (it is listed, not timed)


def timed_step(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], train: bool, *args, **kwargs):
    """A call of ``fn``; with ``train``, its backward too (gradients of ``inputs``, not accumulated)."""

    def call():
        out = fn(*args, **kwargs)
        if train:
            flat = out.values() if out.is_nested else out
            torch.autograd.grad(flat, inputs, torch.ones_like(flat))
        return out

    return call


@contextlib.contextmanager
def only(*backends: Backend, torch_kernel: SDPBackend | None = None) -> Iterator[None]:
    """Restrict the dispatcher to ``backends`` (and torch to one of its kernels) for one timed case."""
    with (
        sdpa_kernel(list(backends)),
        torch_sdpa_kernel(torch_kernel) if torch_kernel else contextlib.nullcontext(),
    ):
        yield


LENGTH_KINDS = ("tutorial", "even")


def padded_lengths(batch: int, max_len: int, generator: torch.Generator, kind: str = "even") -> list[int]:
    """Sequence lengths for a padded batch with about 50% padding, the first at full length.

    ``"tutorial"``: the SDPA tutorial's batches (and the issues' goals): every other sequence near half the maximum
    (a normal draw, 1% of it as standard deviation), so a few distinct lengths; 16 x 256 -> ~2,180 real tokens of
    4,096 and ~30% of the attention pairs. ``"even"``: lengths spread evenly over (0, max_len] in random order,
    many distinct lengths (16 x 256 -> 2,176 real tokens, ~37% of the pairs): the harder case for packing.
    """
    if kind == "tutorial":
        draws = torch.normal(0.5, 0.01, (batch - 1,), generator=generator).tolist()
        return [max_len, *(min(max_len, max(1, int(max_len * (1 - d)))) for d in draws)]
    if kind != "even":
        raise ValueError(f"kind={kind!r}: expected one of {LENGTH_KINDS}")
    lengths = [max(1, round(max_len * (batch - i) / batch)) for i in range(batch)]
    order = torch.randperm(batch - 1, generator=generator).tolist()
    return [lengths[0], *(lengths[1 + i] for i in order)]


def first_reasons(message: str) -> str:
    """The reasons of a `NoBackendAvailableError`, on one line."""
    lines = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    return "; ".join(line.split(": ", 1)[-1] for line in lines) or message


def torch_refusal(err: RuntimeError, device: torch.device) -> str:
    """Why torch refused one of its kernels for an input, on one line."""
    reason = str(err).splitlines()[0]
    if "No viable backend" in reason and device.type == "cpu":
        return "torch has no CPU kernel for it (on CPU torch implements flash and math only)"
    return reason
