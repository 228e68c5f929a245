"""The tiles that compile spill-free, per kernel, architecture, head-dim bucket and kind, per Triton version.

``TABLE[kernel][(arch, path, bucket, kind)]``: the tiles kept, at most three (each one the autotuner tries costs a
compile on the GPU), in the order of `tiles.CONFIGS` (larger tiles first) among those that compile without register
spills within shared memory (on sm_90 with wgmma, except the decode kernel: `compile_check.no_wgmma_tile`).
``arch`` 80 stands for every card before Hopper (no copy engine: pointer path only), 90 for Hopper and later;
``path`` "tma" or "ptr"; ``bucket`` the padded head dim (64, 128, 256); ``kind`` "plain", "tile" (more state is
live: a mask or dropout tile, variable length, a window's left edge, or grouped query heads in dK/dV), "fp32"
(float32 operands), "fp32-tile" (both); "tile:varlen", "tile:dropout", "tile:dropout+varlen" (the "tile" kind with
exactly that state live, at head dims up to 128: `tiles.narrow_kind`). The "tile" rows hold the
tiles that stayed spill-free with all of that state live at once (a mask, dropout, a window and grouped heads, dense;
and the same with variable length instead of the mask); "fp32-tile" likewise where one passed, else tiles spill-free
in both the "fp32" and the "tile" measurement.

Register allocation differs between Triton versions (the same tile can spill under one and not another), so the
table is chosen by the installed version (`for_version`). Measured 2026-11-27 for sm_80/sm_90 with ``python -m
kernels.compile_check --measure-tiles`` (which compiles exactly what the JIT compiles):

- `TRITON_39`: under triton 3.9 (what pip installs today); used from 3.9 on.
- `BOTH_36_39`: tiles spill-free under triton 3.6 (the GPU image's) *and* 3.9; used below 3.9 (3.7 and 3.8 were not
  measured: the tiles both ends keep are the safe choice). Triton 3.6 spills more (e.g. dK/dV's 64x128 tile at head
  dim 128), so its main tiles are smaller. Five rows have no tile spill-free under both and keep 3.9's: dK/dV (80, ptr,
  128, fp32-tile), (90, ptr, 128, tile), (90, tma, 256, tile), (90, ptr, 256, fp32-tile) and dQ (90, tma, 256, fp32);
  the last two are never used (float32 above head dim 128 is not served by TRITON:
  `kernels.triton.unavailable_reasons`). Three rows were narrowed further because a tile the measurement kept spilled
  in one of the compile check's covering variants under 3.6 (register allocation is not monotone in the features:
  the forward at head dim 64 with variable length, causal and dropout spills at 64x64 although the same with a window
  and grouped heads added does not): forward (90, tma, 64, tile), dQ (80, ptr, 64, plain) and (90, tma, 64, tile).
  Later the same night dQ (80, ptr, 256, tile) was found stale under 3.6: its 16x32 tile spilled 8-12 bytes with
  variable length and causal dropout, or variable length with a window and grouped heads, and 16x16 spilled 4 with
  dropout and grouped heads (no whole-head-dim tile of five tried passed all); that row now runs dQ in halves too
  (`DQ_HALVES_36`, below).

Re-measured the same day for the launches that run in parts (``--kernel``/``--head-dim-bucket``/``--kind``): dK/dV's
(90, *, 256, plain) rows hold the tiles spill-free in both its dV and its dK launch (`ops.dkdv_parts`), under both
versions for `BOTH_36_39`; `BOTH_36_39`'s dQ (90, tma, 256, tile) row holds the tiles of dQ's half-head-dim launches
under triton 3.6 (`DQ_HALVES_36`: only below 3.9 does dQ run in halves).

Re-measured 2026-11-27 night for dK/dV above head dim 128 on sm_90 with **one** feature of extra state live (a bool
mask, an additive mask, dropout, variable length, a window or grouped heads: kinds ``"tile-bool"``, ...,
`tiles.split_kind`): rows of its dV and dK launches, each tile kept only where both launches compile spill-free
with ``wgmma``, causal or not (``--measure-tiles --kernel bwd_dkdv --head-dim-bucket 256 --kind tile-bool ...``).
Where a row is empty (grouped heads under 3.9; under 3.6 also dropout and an additive mask on the copy-engine
path) the halves below run instead.

Re-measured 2026-11-27, late, for **several** features live at once (`tiles.halves_take`): kind ``"tile-halves"``,
the rows of dK/dV's dV and dK launches each run over half of the head dim (four launches, `ops.dkdv_parts`).
16x128 on 8 warps compiled spill-free with ``wgmma`` in every one of the four launches under 3.6 and 3.9, for each
combination of `compile_check.MEASURED_KINDS`' "tile-halves" list: both paths, except grouped heads with a mask or
dropout, pointer path only (2026-11-28: there the copy-engine path's dK half spills 4-176 B under 3.9, so those
halves load through pointers, `tiles.halves_on_pointers`). 32x128, 32x64, 64x64, 64x128 and 16x64 spilled in
some combinations (tried under 3.9 with grouped heads and dropout or a mask); the rows keep 16x128 only.
``--measure-tiles --kernel bwd_dkdv --head-dim-bucket 256 --kind tile-halves`` compiles all tiles (hours on 2 cores).

Re-measured 2026-11-28 for the "tile" and "fp32-tile" kinds with the feature combinations calls make
(`compile_check._TILE_STATE`; the rows before were measured with a mask beside causal or a window, which no call
passes, and kept tiles that spilled with the combinations calls do pass): ``--measure-tiles --kind tile fp32-tile
--keep 13`` under 3.9 (every passing tile; `TRITON_39` keeps the first three), then under 3.6 ``--among`` that output
(`BOTH_36_39`), and the dQ halves rows (`DQ_HALVES_36`, `DQ_HALVES_39`) under each version alone (they run halves
there). dK/dV (90, tma, 128, tile) in `BOTH_36_39` holds 3.6's own tile (none passes both). Rows where no tile
passed every combination keep their former tiles (they may spill in some combination: slower, never wrong):
listed in docs/benchmarks.md.

The compile check fails when a tile the installed version's table keeps spills.
"""

from __future__ import annotations

Tile = tuple[int, int, int, int]  # BLOCK_M, BLOCK_N, num_warps, num_stages
Table = dict[str, dict[tuple[int, str, int, str], list[Tile]]]

TRITON_39: Table = {
    'attn_fwd': {
        (80, 'ptr', 64, 'fp32'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (80, 'ptr', 64, 'fp32-tile'): [(64, 64, 8, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
        (80, 'ptr', 64, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (80, 'ptr', 64, 'tile'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2)],
        (80, 'ptr', 128, 'fp32'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2)],
        (80, 'ptr', 128, 'fp32-tile'): [(64, 32, 4, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
        (80, 'ptr', 128, 'plain'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 128, 'tile'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 256, 'fp32'): [(64, 16, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1)],
        (80, 'ptr', 256, 'fp32-tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 256, 'plain'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 256, 'tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 16, 8, 1)],
        (90, 'ptr', 64, 'fp32'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'fp32-tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 64, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 128, 'fp32'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'ptr', 128, 'fp32-tile'): [(64, 32, 4, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
        (90, 'ptr', 128, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 128, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 256, 'fp32'): [(64, 32, 4, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
        (90, 'ptr', 256, 'fp32-tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'plain'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'ptr', 256, 'tile'): [(64, 16, 4, 2)],
        (90, 'tma', 64, 'fp32'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'fp32-tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 64, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 128, 'fp32'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'tma', 128, 'fp32-tile'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2)],
        (90, 'tma', 128, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 128, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 256, 'fp32'): [(64, 32, 4, 2), (64, 16, 4, 2), (16, 32, 8, 1)],
        (90, 'tma', 256, 'fp32-tile'): [(64, 16, 4, 2), (16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'tma', 256, 'plain'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'tma', 256, 'tile'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        # the "tile" kind narrowed to one feature set at head dims up to 128 (`tiles.narrow_kind`, measured 2026-11-28)
        (80, 'ptr', 64, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 64, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 64, 'tile:varlen'): [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2)],
        (80, 'ptr', 128, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 128, 'tile:dropout+varlen'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 128, 'tile:varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 16, 4, 2)],
        (90, 'ptr', 64, 'tile:dropout'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'tile:dropout+varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 128, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 128, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'tile:dropout'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'tile:dropout+varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 128, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 128, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 128, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
    },
    'attn_bwd_dkdv': {
        (80, 'ptr', 64, 'fp32'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (80, 'ptr', 64, 'fp32-tile'): [(16, 64, 8, 1), (16, 16, 8, 1)],
        (80, 'ptr', 64, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (80, 'ptr', 64, 'tile'): [(16, 64, 8, 1), (16, 32, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 128, 'fp32'): [(16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 8, 1)],
        (80, 'ptr', 128, 'fp32-tile'): [(16, 64, 8, 1)],
        (80, 'ptr', 128, 'plain'): [(16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 8, 1)],
        (80, 'ptr', 128, 'tile'): [(16, 32, 8, 1), (16, 16, 8, 1)],  # 16x64: 16 B with dropout (2026-11-28)
        (80, 'ptr', 256, 'fp32'): [(16, 32, 4, 1), (16, 32, 8, 1), (16, 16, 8, 1)],
        (80, 'ptr', 256, 'fp32-tile'): [(16, 16, 8, 1)],
        (80, 'ptr', 256, 'plain'): [(16, 64, 8, 1), (32, 32, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 256, 'tile'): [(16, 32, 8, 1)],
        (90, 'ptr', 64, 'fp32'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'ptr', 64, 'fp32-tile'): [(16, 128, 8, 2), (16, 16, 8, 1)],
        (90, 'ptr', 64, 'plain'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'ptr', 64, 'tile'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'ptr', 128, 'fp32'): [(16, 128, 8, 2), (32, 32, 4, 1), (16, 32, 4, 1)],
        (90, 'ptr', 128, 'fp32-tile'): [(16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'ptr', 128, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 128, 'tile'): [(16, 128, 8, 2), (16, 64, 8, 1)],
        (90, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (16, 32, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'fp32-tile'): [(16, 32, 8, 1)],
        (90, 'ptr', 256, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile'): [(16, 128, 8, 2)],
        (90, 'tma', 64, 'fp32'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 64, 'fp32-tile'): [(16, 64, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'tma', 64, 'plain'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 64, 'tile'): [(32, 128, 8, 2), (16, 128, 8, 2), (16, 64, 8, 1)],
        (90, 'tma', 128, 'fp32'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 128, 'fp32-tile'): [(16, 16, 8, 1)],
        (90, 'tma', 128, 'plain'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 128, 'tile'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        (90, 'tma', 256, 'fp32'): [],
        (90, 'tma', 256, 'fp32-tile'): [],
        (90, 'tma', 256, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 256, 'tile'): [(32, 128, 8, 2), (16, 128, 8, 2), (16, 64, 8, 1)],
        # the "tile" kind narrowed to one feature set at head dims up to 128 (`tiles.narrow_kind`, measured 2026-11-28)
        (80, 'ptr', 64, 'tile:dropout'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (80, 'ptr', 64, 'tile:dropout+varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (80, 'ptr', 64, 'tile:varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (80, 'ptr', 128, 'tile:dropout'): [(16, 64, 8, 1), (16, 64, 4, 2), (32, 32, 4, 1)],
        (80, 'ptr', 128, 'tile:dropout+varlen'): [(16, 64, 8, 1), (16, 64, 4, 2), (16, 32, 8, 1)],
        (80, 'ptr', 128, 'tile:varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'ptr', 64, 'tile:dropout'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 64, 'tile:dropout+varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 64, 'tile:varlen'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout'): [(16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 8, 1)],
        (90, 'ptr', 128, 'tile:dropout+varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'ptr', 128, 'tile:varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 64, 'tile:dropout'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 64, 'tile:dropout+varlen'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 64, 'tile:varlen'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 128, 'tile:dropout'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 128, 'tile:dropout+varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 128, 'tile:varlen'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        # grouped heads with a mask or dropout at head dim 128 (`tiles.groups_split`): the dV and dK launches' tiles
        (90, 'ptr', 128, 'tile-gqa-128'): [(16, 128, 8, 2)],
        (90, 'tma', 128, 'tile-gqa-128'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        # one feature live (`tiles.split_kind`): the dV and dK launches' tiles, both spill-free with wgmma
        (90, 'ptr', 256, 'tile-additive'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        (90, 'ptr', 256, 'tile-bool'): [(16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-dropout'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        (90, 'ptr', 256, 'tile-gqa'): [],
        (90, 'ptr', 256, 'tile-halves'): [(16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-window'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 256, 'tile-additive'): [(32, 128, 8, 2), (16, 128, 8, 2), (32, 64, 4, 2)],
        (90, 'tma', 256, 'tile-bool'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'tma', 256, 'tile-dropout'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        (90, 'tma', 256, 'tile-gqa'): [],
        (90, 'tma', 256, 'tile-halves'): [(16, 128, 8, 2)],
        (90, 'tma', 256, 'tile-varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 256, 'tile-window'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
    },
    'attn_bwd_dq': {
        (80, 'ptr', 64, 'fp32'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 64, 'fp32-tile'): [(128, 16, 8, 2), (64, 32, 8, 2), (16, 32, 8, 1)],
        (80, 'ptr', 64, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (80, 'ptr', 64, 'tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 128, 'fp32'): [(128, 16, 8, 2), (64, 64, 4, 2), (64, 32, 8, 2)],
        (80, 'ptr', 128, 'fp32-tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 128, 'plain'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 128, 'tile'): [(64, 32, 8, 2), (32, 32, 4, 1), (32, 16, 4, 1)],
        (80, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 256, 'fp32-tile'): [(16, 32, 8, 1)],
        (80, 'ptr', 256, 'plain'): [(64, 32, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 256, 'tile'): [(128, 16, 8, 2), (32, 32, 4, 1), (32, 16, 4, 1)],  # dQ in halves (DQ_HALVES_39)
        (90, 'ptr', 64, 'fp32'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'fp32-tile'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'fp32'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'fp32-tile'): [(128, 32, 8, 2), (128, 16, 8, 2), (64, 16, 4, 2)],
        (90, 'ptr', 128, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 128, 'tile'): [(128, 32, 8, 2), (128, 16, 8, 2), (64, 32, 8, 2)],
        (90, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'fp32-tile'): [(16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'ptr', 256, 'plain'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 256, 'tile'): [(128, 16, 8, 2)],
        (90, 'tma', 64, 'fp32'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'fp32-tile'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'fp32'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 128, 'fp32-tile'): [(128, 32, 8, 2), (128, 16, 8, 2), (64, 32, 8, 2)],
        (90, 'tma', 128, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'tile'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 256, 'fp32'): [(64, 16, 4, 2)],
        (90, 'tma', 256, 'fp32-tile'): [],
        (90, 'tma', 256, 'plain'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 256, 'tile'): [(128, 16, 8, 2), (64, 16, 4, 2)],
        # the "tile" kind narrowed to one feature set at head dims up to 128 (`tiles.narrow_kind`, measured 2026-11-28)
        (80, 'ptr', 64, 'tile:dropout'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 64, 'tile:dropout+varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 64, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (80, 'ptr', 128, 'tile:dropout'): [(128, 16, 8, 2), (64, 32, 8, 2), (64, 16, 4, 2)],
        (80, 'ptr', 128, 'tile:dropout+varlen'): [(128, 16, 8, 2), (64, 64, 4, 2), (64, 32, 8, 2)],
        (80, 'ptr', 128, 'tile:varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 64, 'tile:dropout'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'tile:dropout+varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout+varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile:dropout'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile:dropout+varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'tile:dropout'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'tile:dropout+varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
    },
}  # fmt: skip

BOTH_36_39: Table = {
    'attn_fwd': {
        (80, 'ptr', 64, 'fp32'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (80, 'ptr', 64, 'fp32-tile'): [(64, 64, 8, 2), (32, 16, 4, 1)],
        (80, 'ptr', 64, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (80, 'ptr', 64, 'tile'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 128, 'fp32'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2)],
        (80, 'ptr', 128, 'fp32-tile'): [(64, 16, 4, 2), (32, 16, 4, 1)],
        (80, 'ptr', 128, 'plain'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 128, 'tile'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 256, 'fp32'): [(64, 16, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1)],
        (80, 'ptr', 256, 'fp32-tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 16, 8, 1)],
        (80, 'ptr', 256, 'plain'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 256, 'tile'): [(32, 32, 4, 1), (32, 16, 4, 1)],
        (90, 'ptr', 64, 'fp32'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'fp32-tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 64, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 128, 'fp32'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'ptr', 128, 'fp32-tile'): [(64, 16, 4, 2), (32, 16, 4, 1)],
        (90, 'ptr', 128, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 128, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'fp32-tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'plain'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2)],
        (90, 'ptr', 256, 'tile'): [(32, 32, 4, 1), (32, 16, 4, 1)],
        (90, 'tma', 64, 'fp32'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'fp32-tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 64, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 64, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 128, 'fp32'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'tma', 128, 'fp32-tile'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (90, 'tma', 128, 'plain'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 128, 'tile'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 256, 'fp32'): [(16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'tma', 256, 'fp32-tile'): [(16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'tma', 256, 'plain'): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3)],
        (90, 'tma', 256, 'tile'): [(64, 64, 8, 2), (64, 16, 4, 2)],
        # the "tile" kind narrowed to one feature set at head dims up to 128 (`tiles.narrow_kind`): the tiles
        # spill-free under both versions (measured 2026-11-28)
        (80, 'ptr', 64, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 64, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 64, 'tile:varlen'): [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2)],
        (80, 'ptr', 128, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (80, 'ptr', 128, 'tile:dropout+varlen'): [(64, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        (80, 'ptr', 128, 'tile:varlen'): [(64, 16, 4, 2), (32, 32, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 64, 'tile:dropout'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 64, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 64, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'ptr', 128, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'ptr', 128, 'tile:varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 64, 'tile:dropout'): [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2)],
        (90, 'tma', 64, 'tile:dropout+varlen'): [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2)],
        (90, 'tma', 64, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
        (90, 'tma', 128, 'tile:dropout'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 128, 'tile:dropout+varlen'): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
        (90, 'tma', 128, 'tile:varlen'): [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
    },
    'attn_bwd_dkdv': {
        (80, 'ptr', 64, 'fp32'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (80, 'ptr', 64, 'fp32-tile'): [(16, 64, 8, 1), (16, 16, 8, 1)],
        (80, 'ptr', 64, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (80, 'ptr', 64, 'tile'): [(16, 64, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1)],
        (80, 'ptr', 128, 'fp32'): [(16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 8, 1)],
        (80, 'ptr', 128, 'fp32-tile'): [(16, 64, 8, 1)],
        (80, 'ptr', 128, 'plain'): [(16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 8, 1)],
        (80, 'ptr', 128, 'tile'): [(16, 32, 8, 1)],
        (80, 'ptr', 256, 'fp32'): [(16, 32, 4, 1), (16, 32, 8, 1), (16, 16, 8, 1)],
        (80, 'ptr', 256, 'fp32-tile'): [(16, 16, 8, 1)],
        (80, 'ptr', 256, 'plain'): [(16, 64, 8, 1), (32, 32, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 256, 'tile'): [(16, 32, 8, 1)],
        (90, 'ptr', 64, 'fp32'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 64, 'fp32-tile'): [(16, 16, 8, 1)],
        (90, 'ptr', 64, 'plain'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'ptr', 64, 'tile'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'ptr', 128, 'fp32'): [(16, 128, 8, 2), (32, 32, 4, 1), (16, 32, 4, 1)],
        (90, 'ptr', 128, 'fp32-tile'): [(16, 32, 8, 1)],
        (90, 'ptr', 128, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 128, 'tile'): [(16, 128, 8, 2), (16, 64, 8, 1)],
        (90, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (16, 32, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'fp32-tile'): [(16, 32, 8, 1)],
        (90, 'ptr', 256, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile'): [(16, 128, 8, 2)],
        (90, 'tma', 64, 'fp32'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 64, 'fp32-tile'): [(16, 64, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'tma', 64, 'plain'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 64, 'tile'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'tma', 128, 'fp32'): [(16, 64, 8, 1)],
        (90, 'tma', 128, 'fp32-tile'): [(16, 16, 8, 1)],
        (90, 'tma', 128, 'plain'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 128, 'tile'): [(16, 64, 8, 1)],  # 3.6's own: no tile passes both versions
        (90, 'tma', 256, 'fp32'): [],
        (90, 'tma', 256, 'fp32-tile'): [],
        (90, 'tma', 256, 'plain'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        (90, 'tma', 256, 'tile'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        # the "tile" kind narrowed to one feature set at head dims up to 128 (`tiles.narrow_kind`): the tiles spill-free
        # under both versions (measured 2026-11-28)
        (80, 'ptr', 64, 'tile:dropout'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (80, 'ptr', 64, 'tile:dropout+varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (80, 'ptr', 64, 'tile:varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (80, 'ptr', 128, 'tile:dropout'): [(16, 64, 8, 1), (16, 64, 4, 2), (32, 32, 4, 1)],
        (80, 'ptr', 128, 'tile:dropout+varlen'): [(16, 64, 8, 1), (16, 64, 4, 2), (16, 32, 8, 1)],
        (80, 'ptr', 128, 'tile:varlen'): [(16, 64, 8, 1), (16, 64, 4, 2), (32, 32, 4, 1)],
        (90, 'ptr', 64, 'tile:dropout'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 64, 'tile:dropout+varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 64, 'tile:varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout'): [(16, 128, 8, 2), (16, 64, 8, 1)],
        (90, 'ptr', 128, 'tile:dropout+varlen'): [(16, 128, 8, 2), (16, 64, 8, 1)],
        (90, 'ptr', 128, 'tile:varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 64, 'tile:dropout'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 64, 'tile:dropout+varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 64, 'tile:varlen'): [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2)],
        (90, 'tma', 128, 'tile:dropout'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'tma', 128, 'tile:dropout+varlen'): [(16, 128, 8, 2), (16, 64, 8, 1), (16, 64, 4, 2)],
        (90, 'tma', 128, 'tile:varlen'): [(32, 128, 8, 3), (16, 128, 8, 2), (16, 64, 8, 1)],
        # grouped heads with a mask or dropout at head dim 128 (`tiles.groups_split`): the dV and dK launches' tiles;
        # the copy-engine row as measured under 3.6 (its 16x128 spills 16-20 B with packed sequences there, and
        # 3.9's 16x64 w8 s1 8 B with an additive mask: 3.9 reads its own row)
        (90, 'ptr', 128, 'tile-gqa-128'): [(16, 128, 8, 2)],
        (90, 'tma', 128, 'tile-gqa-128'): [(16, 64, 8, 1)],
        # one feature live (`tiles.split_kind`): the dV and dK launches' tiles, both spill-free with wgmma
        (90, 'ptr', 256, 'tile-additive'): [(16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-bool'): [(16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-dropout'): [(16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-gqa'): [],
        (90, 'ptr', 256, 'tile-halves'): [(16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-varlen'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'ptr', 256, 'tile-window'): [(32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2)],
        (90, 'tma', 256, 'tile-additive'): [],
        (90, 'tma', 256, 'tile-bool'): [(16, 64, 4, 2)],
        (90, 'tma', 256, 'tile-dropout'): [],
        (90, 'tma', 256, 'tile-gqa'): [],
        (90, 'tma', 256, 'tile-halves'): [(16, 128, 8, 2)],
        (90, 'tma', 256, 'tile-varlen'): [(16, 128, 8, 2), (16, 64, 4, 2)],
        (90, 'tma', 256, 'tile-window'): [(16, 128, 8, 2), (16, 64, 4, 2)],
    },
    'attn_bwd_dq': {
        (80, 'ptr', 64, 'fp32'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 64, 'fp32-tile'): [(128, 16, 8, 2), (16, 32, 8, 1), (16, 16, 8, 1)],
        (80, 'ptr', 64, 'plain'): [(128, 16, 8, 2), (64, 32, 8, 2)],
        (80, 'ptr', 64, 'tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 128, 'fp32'): [(128, 16, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2)],
        (80, 'ptr', 128, 'fp32-tile'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 128, 'plain'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 128, 'tile'): [(64, 32, 8, 2), (32, 32, 4, 1), (32, 16, 4, 1)],
        (80, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (80, 'ptr', 256, 'fp32-tile'): [(16, 32, 8, 1)],
        (80, 'ptr', 256, 'plain'): [(64, 32, 8, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
        (80, 'ptr', 256, 'tile'): [(128, 16, 8, 2), (32, 32, 4, 1), (16, 32, 8, 1)],  # dQ in halves (DQ_HALVES_36)
        (90, 'ptr', 64, 'fp32'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'fp32-tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 64, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'fp32'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'fp32-tile'): [(128, 16, 8, 2), (32, 16, 4, 1), (16, 16, 8, 1)],
        (90, 'ptr', 128, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 128, 'tile'): [(128, 32, 8, 2), (128, 16, 8, 2), (64, 32, 8, 2)],
        (90, 'ptr', 256, 'fp32'): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1)],
        (90, 'ptr', 256, 'fp32-tile'): [(16, 32, 8, 1), (16, 16, 8, 1)],
        (90, 'ptr', 256, 'plain'): [(128, 32, 8, 2), (128, 16, 8, 2), (64, 32, 8, 2)],
        (90, 'ptr', 256, 'tile'): [(128, 16, 8, 2)],
        (90, 'tma', 64, 'fp32'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'fp32-tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 64, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'fp32'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 128, 'fp32-tile'): [(128, 16, 8, 2), (64, 32, 8, 2), (64, 16, 4, 2)],
        (90, 'tma', 128, 'plain'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'tile'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 256, 'fp32'): [(64, 16, 4, 2)],
        (90, 'tma', 256, 'fp32-tile'): [],
        (90, 'tma', 256, 'plain'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 256, 'tile'): [(128, 16, 8, 2), (64, 32, 8, 2), (64, 16, 4, 2)],  # dQ in halves (DQ_HALVES_36)
        # the "tile" kind narrowed to one feature set at head dims up to 128 (`tiles.narrow_kind`): the tiles
        # spill-free under both versions (measured 2026-11-28)
        (80, 'ptr', 64, 'tile:dropout'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 64, 'tile:dropout+varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 64, 'tile:varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (80, 'ptr', 128, 'tile:dropout'): [(128, 16, 8, 2), (64, 32, 8, 2), (64, 16, 4, 2)],
        (80, 'ptr', 128, 'tile:dropout+varlen'): [(128, 16, 8, 2), (64, 32, 8, 2), (64, 16, 4, 2)],
        (80, 'ptr', 128, 'tile:varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 64, 'tile:dropout'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'tile:dropout+varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 64, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'tile:dropout+varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'ptr', 128, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile:dropout'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile:dropout+varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 64, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
        (90, 'tma', 128, 'tile:dropout'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 128, 'tile:dropout+varlen'): [(128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2)],
        (90, 'tma', 128, 'tile:varlen'): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2)],
    },
}  # fmt: skip


# Rows where dQ runs as two half-head-dim launches (`tiles.dq_halves`): under triton 3.6 no tile of the whole head
# dim 256 compiles spill-free with wgmma when more state is live (16-32-row tiles: mma.sync); with half the
# accumulator, 128x16 does (measured 2026-11-27: 227-238 registers, no spill, in every "tile" combination). On sm_80
# (mma.sync either way) no whole-head-dim tile is spill-free in every "tile" state under 3.6 (module docstring);
# the halves' 32x32 and 32x16 are, in those states and the "tile" combinations (both halves), and their loop profile
# per MFLOP of dQ's work is no worse than the spilling 16x32's (1,851 against 1,974 with variable length, a window
# and grouped heads; 4,857 against 4,944 with a mask, dropout, causal). Their rows in `BOTH_36_39` hold the tiles
# measured for the halves.
DQ_HALVES_36: set[tuple[int, str, int, str]] = {(90, "tma", 256, "tile"), (80, "ptr", 256, "tile")}
# Under 3.9 sm_80 joined on 2026-11-28: with the combinations calls make, no whole-head-dim tile at d=256 compiled
# spill-free in all of them (16x32 spilled 12 B with packed sequences, a window and grouped heads; 16x16 4 B with a
# bool mask in bfloat16); its `TRITON_39` row holds the tiles measured for the halves.
DQ_HALVES_39: set[tuple[int, str, int, str]] = {(80, "ptr", 256, "tile")}


def dq_halves_for(version: str) -> set[tuple[int, str, int, str]]:
    """The rows where dQ runs in halves for a Triton version (`DQ_HALVES_36`, or `DQ_HALVES_39` from 3.9 on)."""
    return DQ_HALVES_39 if for_version(version) is TRITON_39 else DQ_HALVES_36


def for_version(version: str) -> Table:
    """The table for a Triton version string such as ``"3.6.0"``."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return TRITON_39 if (major, minor) >= (3, 9) else BOTH_36_39
