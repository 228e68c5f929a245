"""``python -m kernels.bench --halves W``: dK/dV above head dim 128 in its half-head-dim launches against the one
launch they replace, forward and backward, on one dense input with a few features live.

What it is for: with grouped heads and a sliding window (a Gemma-2-like layer) above head dim 128, the spill table
sends dK/dV's dV and dK launches to run once per half of the head dim each (`kernels.triton.ops.dkdv_parts`):
``wgmma`` tiles, twice the matrix products. The static loop profile says fewer instructions; only a GPU says whether
it is faster. With ``--halves-dropout P`` (dropout as well) the halves load through pointers
(`kernels.triton.tiles.halves_on_pointers`) and each regenerates the dropout mask: the static profile counts more
instructions there than the one launch's, and only a card says which is faster. The cases: ``TRITON`` as the table
chooses, ``TRITON`` with dK/dV forced into one launch, and
``TORCH`` (torch's SDPA on windowed chunks). On a card or Triton without the halves (sm_80, float32) the first two
run the same launches.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

from ..backends import Backend
from ..masks import sliding_window
from ..sdpa import scaled_dot_product_attention
from .common import TRAIN_FLOPS_FACTOR, Case, attention_flops, only, timed_step


def halves_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Case], float]:
    """The three cases on ``(batch, heads, L, head_dim)`` queries, half as many key/value heads, a causal window of
    ``args.halves`` keys; the work counted is the window's (each query sees at most that many keys)."""
    from ..triton import ops

    gen = torch.Generator(device=device).manual_seed(0)
    B, H, L, E = args.batch, args.heads, args.seq_len, args.head_dim
    Hk = max(1, H // 2)
    q = torch.randn(B, H, L, E, device=device, dtype=dtype, generator=gen, requires_grad=True)
    k, v = (torch.randn(B, Hk, L, E, device=device, dtype=dtype, generator=gen, requires_grad=True) for _ in range(2))
    band = sliding_window(L, L, args.halves - 1)
    call = timed_step(scaled_dot_product_attention, [q, k, v], True, q, k, v, attn_mask=band, enable_gqa=True,
                      dropout_p=args.halves_dropout)  # fmt: skip

    @contextlib.contextmanager
    def one_launch() -> Iterator[None]:
        chosen = ops.dkdv_parts
        ops.dkdv_parts = lambda *a, **kw: ((0, 0),)
        try:
            with only(Backend.TRITON):
                yield
        finally:
            ops.dkdv_parts = chosen

    cases = [
        Case("TRITON, dK/dV as the table chooses", lambda: only(Backend.TRITON), call),
        Case("TRITON, dK/dV in one launch (forced)", one_launch, call),
        Case("TORCH, window (chunked)", lambda: only(Backend.TORCH), call),
    ]
    flops = attention_flops(B, H, L, min(L, args.halves), E, False)  # about the window's work
    return cases, flops * TRAIN_FLOPS_FACTOR
