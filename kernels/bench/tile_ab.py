"""``python -m kernels.bench --tiles KERNEL``: one fused kernel timed with each tile of its autotune list forced
(the others autotuned as usual), against the autotuner's own choice, on one dense input.

What it is for: the tile table (`kernels.triton.spill_free`) keeps a tile only where the offline compile shows no
register spill, and the static loop profile ranks the kept ones; this measures on a GPU whether that ranking holds
and what a tile the table leaves out would give (e.g. under triton 3.6 the 64x128 dK/dV tile at head dim 128 spills
32 bytes, none of them in the hot loop, and its loop profile is 30% below the kept 32x128's). Each row says whether
the prune keeps that tile for this input. Under the Triton interpreter every tile runs as the interpreter's one.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from ..backends import Backend
from ..sdpa import scaled_dot_product_attention
from .common import TRAIN_FLOPS_FACTOR, Case, attention_flops, only, timed_step

KERNELS = ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")


def tile_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Case], float]:
    """The autotuned kernel and one case per forced tile (the first ``--max-tiles`` of the kernel's list)."""
    from ..triton import tiles

    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    train = args.train
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen, requires_grad=train) for _ in range(3))
    call = timed_step(scaled_dot_product_attention, [q, k, v], train, q, k, v, is_causal=args.causal)
    kernel = args.tiles
    kind = tiles.kind_of(kernel, dtype, 0, False)
    arch = tiles.device_arch(q)
    kept = tiles.kept_tiles(kernel, arch, arch >= 90, tiles.block_dim(args.head_dim), kind)

    def forced(tile):
        @contextlib.contextmanager
        def context():
            with only(Backend.TRITON), tiles.forced(kernel, tile):
                yield

        return context

    cases = [Case(f"{kernel}: autotuned", lambda: only(Backend.TRITON), call)]
    for tile in tiles.CONFIGS[kernel][: args.max_tiles]:
        m, n, w, s = tile
        label = "kept" if tile in kept else "not kept"
        cases.append(Case(f"{kernel} {m}x{n} w{w} s{s} ({label})", forced(tile), call))
    flops = attention_flops(*shape[:3], args.seq_len, args.head_dim, args.causal)
    return cases, flops * (TRAIN_FLOPS_FACTOR if train else 1)
