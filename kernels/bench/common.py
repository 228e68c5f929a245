"""What the attention benchmarks share: the FLOP formula, backend selection for one timed case, the seed's padded
lengths, and how a case that cannot run is reported."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel as torch_sdpa_kernel

from ..backends import Backend, sdpa_kernel

__all__ = ["TRAIN_FLOPS_FACTOR", "attention_flops", "first_reasons", "only", "padded_lengths", "torch_refusal"]

TRAIN_FLOPS_FACTOR = 3.5  # forward + backward FLOPs / forward FLOPs


def attention_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs of attention: two (L x S x E) matmuls, 2 FLOPs per multiply-add; causal halves it."""
    flops = 4.0 * batch * heads * q_len * k_len * head_dim
    return flops / 2 if causal else flops


@contextlib.contextmanager
def only(*backends: Backend, torch_kernel: SDPBackend | None = None) -> Iterator[None]:
    """Restrict the dispatcher to ``backends`` (and torch to one of its kernels) for one timed case."""
    with (
        sdpa_kernel(list(backends)),
        torch_sdpa_kernel(torch_kernel) if torch_kernel else contextlib.nullcontext(),
    ):
        yield


def padded_lengths(batch: int, max_len: int, generator: torch.Generator) -> list[int]:
    """Lengths evenly spread over (0, max_len] in random order, the first at full length: the seed's
    experiment, about 50% padding (16 x 256 -> 2,176 real tokens of 4,096)."""
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
