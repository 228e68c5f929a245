"""The tiles the autotuner may try, and which of them each kernel variant keeps.

Each kernel has its own list of ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` (module level, so the offline compile
check, `kernels.triton.compile_check`, covers exactly these). `SPILL_FREE` says which tiles compile without register
spills and within shared memory, on both the copy-engine (tensor descriptor) and the pointer path, per kernel,
architecture, head-dim bucket and kind, for the installed Triton version (`spill_free`: register allocation differs
between versions); it was measured with the compile check as the JIT compiles the kernels (``python -m
kernels.compile_check --measure-tiles`` prints it again), and the check fails when a kept tile spills.

The autotuner's key buckets the lengths (`length_key`): a new sequence length costs no new benchmarking unless it
crosses a power of two, and the timings are cached on disk across processes (``cache_results``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
import triton

from . import launch, spill_free

Tile = spill_free.Tile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# For each kernel, from the largest tile down. dK/dV owns BLOCK_N keys and steps over BLOCK_M queries; the
# forward and dQ own BLOCK_M queries and step over BLOCK_N keys: 128 rows on 8 warps is each kernel's main tile.
CONFIGS: dict[str, list[Tile]] = {
    "attn_fwd": [
        (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 3),
        (64, 64, 4, 2), (64, 32, 4, 2), (64, 16, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1), (16, 16, 8, 1),
    ],
    "attn_bwd_dkdv": [
        (64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2), (16, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2),
        (16, 64, 8, 1), (16, 64, 4, 2), (32, 32, 4, 1), (16, 32, 4, 1), (16, 32, 8, 1), (16, 16, 8, 1),
    ],
    "attn_bwd_dq": [
        (128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2), (128, 16, 8, 2), (64, 64, 4, 2), (64, 32, 8, 2),
        (64, 32, 4, 2), (64, 16, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 8, 1), (16, 16, 8, 1),
    ],
}  # fmt: skip
INTERPRETER_TILE: Tile = (32, 32, 4, 1)  # the interpreter cannot benchmark: one tile (TRITON-NOTES.md)
PREPROCESS_BLOCK = 32
# Everything the prune decides on is in the key (GROUP: grouped heads change dK/dV's kind), so a cached choice is
# never reused for a launch the prune would have given other tiles.
AUTOTUNE_KEY = [
    "L_KEY", "S_KEY", "D", "DV", "GROUP", "HAS_LEFT", "HAS_RIGHT", "MASK_KIND", "HAS_DROPOUT", "VARLEN", "USE_TMA",
]  # fmt: skip

SPILL_FREE = spill_free.for_version(triton.__version__)  # see spill_free.py
DQ_HALVES = spill_free.dq_halves_for(triton.__version__)


# The host computes these on every launch: plain integer arithmetic, since triton's own `next_power_of_2` and
# `cdiv` are constexpr functions under triton 3.9 (several microseconds a call through their wrapper).
def next_pow2(n: int) -> int:
    """The least power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << (max(1, int(n)) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def length_key(n: int) -> int:
    """The autotuner's bucket of a length: the next power of two, at least 128."""
    return max(128, next_pow2(n))


def block_dim(dim: int) -> int:
    """The padded head dim: a power of two, at least 16 (``tl.dot`` needs K >= 16)."""
    return max(16, next_pow2(dim))


def kind_of(
    kernel: str, dtype: torch.dtype | None, mask_kind: int, dropout: bool,
    varlen: bool = False, left_edge: bool = False, grouped: bool = False,
) -> str:  # fmt: skip
    """The SPILL_FREE kind of a launch: "tile" when more state is live than the plain loop's (a mask or dropout
    tile, variable length, a window's left edge, or grouped query heads in dK/dV, which accumulates them all)."""
    tile = bool(launch_features(kernel, mask_kind, dropout, varlen, left_edge, grouped))
    if dtype == torch.float32:
        return "fp32-tile" if tile else "fp32"
    return "tile" if tile else "plain"


SPLIT_FEATURES = ("bool", "additive", "dropout", "varlen", "window", "gqa")  # a bool or additive mask tile, ...
HALVES_KIND = "tile-halves"  # the row of dK/dV's half-head-dim launches (`split_kind`)
MASKS = frozenset({"bool", "additive"})
GROUPS_KIND = "tile-gqa-128"  # the row of dK/dV's dV and dK launches at head dim 128


def live_features(
    mask_kind: int, dropout: bool, varlen: bool = False, left_edge: bool = False, grouped: bool = False
) -> frozenset[str]:
    """The features of extra state a dK/dV launch has live, by `SPLIT_FEATURES`' names."""
    flags = (mask_kind == 1, mask_kind == 2, dropout, varlen, left_edge, grouped)
    return frozenset(name for name, on in zip(SPLIT_FEATURES, flags, strict=True) if on)


def launch_features(
    kernel: str, mask_kind: int, dropout: bool, varlen: bool = False, left_edge: bool = False, grouped: bool = False
) -> frozenset[str]:
    """The features that take state in ``kernel``'s loop (`live_features`): grouped heads only in dK/dV, which
    accumulates over the group; the forward and dQ handle one query head per program. What decides a launch's
    kind (`kind_of`) and its narrowed row (`narrow_kind`)."""
    return live_features(mask_kind, dropout, varlen, left_edge, grouped and kernel == "attn_bwd_dkdv")


def split_kind(
    kernel: str, dtype: torch.dtype | None, mask_kind: int, dropout: bool,
    varlen: bool = False, left_edge: bool = False, grouped: bool = False, block_d: int = 256,
) -> str | None:  # fmt: skip
    """The finer kind of a dK/dV launch with extra state, for its split launches on sm_90 (`ops.dkdv_parts`), each
    with its own `SPILL_FREE` rows. Above head dim 128 (``block_d``, the padded one): one feature live
    (``"tile-bool"`` for a bool mask tile, ``"tile-additive"``, ``"tile-dropout"``, ``"tile-varlen"``,
    ``"tile-window"``, ``"tile-gqa"``), where a dV and a dK launch over the whole head dim can keep a spill-free
    ``wgmma`` tile; or several (`halves_take`: ``"tile-halves"``), where launches over half the head dim can. At 128:
    grouped heads with a mask or dropout (`groups_split`: ``"tile-gqa-128"``). None for other kernels, float32, no
    features, and where one launch serves (the "tile" kind)."""
    live = live_features(mask_kind, dropout, varlen, left_edge, grouped)
    if kernel != "attn_bwd_dkdv" or dtype == torch.float32 or not live:
        return None
    if block_d <= 128:
        return GROUPS_KIND if groups_split(live, block_d) else None
    if len(live) == 1:
        return f"tile-{next(iter(live))}"
    return HALVES_KIND if halves_take(live) else None


def halves_take(live: frozenset[str]) -> bool:
    """Whether dK/dV's half-head-dim launches stay spill-free with ``wgmma`` with these features live (`split_kind`'s
    names): every combination of two or more that a call makes (a mask tensor never comes with variable length or
    a window: a window is the mask), on the pointer path where `halves_on_pointers` says so. Measured under triton
    3.6 and 3.9 (`spill_free`, 2026-11-27 and -28). The one combination refused, a mask with dropout, a window and
    grouped heads, spills 8 B in the dK half on either path; no call makes it."""
    return len(live) >= 2 and not (live >= {"dropout", "window", "gqa"} and live & MASKS)


def groups_split(live: frozenset[str], block_d: int) -> bool:
    """Whether dK/dV at padded head dim 128 runs as its dV and dK launches on sm_90: with grouped heads and a mask or
    dropout live (with a window or variable length too, or not), where every one-launch ``wgmma`` tile the "tile"
    row kept spilled under triton 3.9 (8-100 B: that state on top of the loop over the group's heads) and the two
    launches, one accumulator each, compile spill-free under 3.6 and 3.9 (measured 2026-11-28). At 64 the one
    launch's tiles stay spill-free there: one launch (the split computes Q K^T twice)."""
    return block_d == 128 and _groups_with_more(live)


def halves_on_pointers(
    mask_kind: int, dropout: bool, varlen: bool = False, left_edge: bool = False, grouped: bool = False
) -> bool:
    """Whether dK/dV's half-head-dim launches load through pointers even where the copy engine could serve: with
    grouped heads and a mask or dropout live, their dK half spills 4-176 B on the copy-engine path under triton 3.9
    (the descriptors' registers on top of the group's loop) and none on the pointer path, under 3.6 and 3.9
    (2026-11-28): the only spill-free ``wgmma`` launches there. They beat the one launch's 16-row ``mma.sync``
    tiles on an H200 (d=256, grouped heads, a window and dropout 0.1: 14.85 against 20.08 ms forward + backward,
    2026-11-28), though the static profile had counted more instructions for them."""
    return _groups_with_more(live_features(mask_kind, dropout, varlen, left_edge, grouped))


def _groups_with_more(live: frozenset[str]) -> bool:
    """Grouped heads with a mask or dropout: the state that spills dK/dV's wgmma tiles where the rules above say."""
    return "gqa" in live and bool(live & (MASKS | {"dropout"}))


def split_row(kind: str | None, half: int) -> str | None:
    """The row of a split dK/dV launch (``half``: its `HALF`): the halves' for a half, else a one-feature kind's."""
    if half:
        return HALVES_KIND
    return None if kind == HALVES_KIND else kind


def split_tiles(arch: int, use_tma: bool, block_d: int, kind: str | None) -> list[Tile]:
    """The `SPILL_FREE` row of a split dK/dV kind (`split_kind`): the tiles spill-free with ``wgmma`` in every one
    of its launches; empty where none is (or no row: head dims up to 128, sm_80)."""
    if kind is None:
        return []
    return list(
        SPILL_FREE["attn_bwd_dkdv"].get((arch_of(arch), "tma" if use_tma else "ptr", bucket_of(block_d), kind), [])
    )


def bucket_of(block_d: int) -> int:
    return next(b for b in (64, 128, 256) if block_d <= b)


def device_arch(t: torch.Tensor) -> int:
    """The compute capability kernels for ``t`` are compiled for, as ``10 * major + minor`` (90 for CPU tensors:
    the interpreter, and the offline check's example launches)."""
    if t.device.type != "cuda":
        return 90
    index = t.device.index
    return _capability(torch.cuda.current_device() if index is None else index)


@functools.cache
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)  # a device query: asked once per device
    return 10 * major + minor


def arch_of(capability: int) -> int:
    return 90 if capability >= 90 else 80


# Feature sets common enough to deserve rows of their own at head dims up to 128 (`narrow_kind`): packed sequences
# (nested inputs, padded batches on their real tokens), dropout (training), and both (a padded layer in training).
NARROW_SETS = (frozenset({"varlen"}), frozenset({"dropout"}), frozenset({"dropout", "varlen"}))


def narrow_kind(kind: str, live: frozenset[str], block_d: int) -> str:
    """The row of a "tile" launch at padded head dim <= 128 whose live features (`live_features`) are one of
    `NARROW_SETS`: ``"tile:" + "+".join(sorted(live))``, e.g. ``"tile:dropout+varlen"``; else ``kind``.

    The "tile" row keeps only tiles spill-free with every feature live at once (a mask, dropout, a window and
    grouped heads), which under triton 3.6 left dK/dV at head dim 128 one 16x64 tile: on an H200 the packed
    backward's dK/dV took 6.9 ms where its dQ took 1.0 (2026-11-28). A call with fewer features live has fewer
    registers taken and keeps the larger tiles its own row measured (`spill_free`)."""
    if kind != "tile" or block_d > 128 or live not in NARROW_SETS:
        return kind
    return "tile:" + "+".join(sorted(live))


def kept_tiles(
    kernel: str, arch: int, use_tma: bool, block_d: int, kind: str, live: frozenset[str] = frozenset()
) -> list[Tile]:
    """The tiles the prune keeps for a variant (all of them where the table has no row: the check then says so).
    ``live``: the launch's features (`launch_features`), for the narrowed rows (`narrow_kind`; where the installed
    version's table lacks one, the "tile" row serves)."""
    table = SPILL_FREE.get(kernel, {})
    where = (arch_of(arch), "tma" if use_tma else "ptr", bucket_of(block_d))
    row = table.get((*where, narrow_kind(kind, live, block_d)))
    if row is None:
        row = table.get((*where, kind))
    return list(row) if row is not None else list(CONFIGS[kernel])


def dq_halves(arch: int, use_tma: bool, block_d: int, kind: str) -> bool:
    """Whether dQ runs as two launches, each over half of the head dim (`attn_bwd_dq`): where the installed
    Triton keeps no spill-free ``wgmma`` tile for the whole head dim (`spill_free.dq_halves_for`)."""
    return (arch_of(arch), "tma" if use_tma else "ptr", bucket_of(block_d), kind) in DQ_HALVES


_forced: dict[str, Tile] = {}
_tuners: dict[str, triton.runtime.Autotuner] = {}
# The autotuner's choice per key (`ops.tuning_key`), kept by the launchers so that a launch whose key is tuned
# skips the autotuner's own per-call bookkeeping; forgotten with the autotuner's (`_forget`).
chosen: dict[tuple, triton.Config] = {}


@contextlib.contextmanager
def forced(kernel: str, tile: Tile) -> Iterator[None]:
    """Run ``kernel`` (``"attn_fwd"``, ``"attn_bwd_dkdv"``, ``"attn_bwd_dq"``) with one tile only, e.g. to check
    that every tile of the list computes correctly (``pytest -m cuda``), not only the autotuner's winner."""
    if tile not in CONFIGS[kernel]:
        raise ValueError(f"{tile} is not in CONFIGS[{kernel!r}]; choose one of {CONFIGS[kernel]}")
    previous = _forced.get(kernel)
    _forced[kernel] = tile
    _forget(kernel)
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(kernel, None)
        else:
            _forced[kernel] = previous
        _forget(kernel)


def _forget(kernel: str) -> None:
    """The autotuner remembers its choice per key: forget it when a tile is forced and when that ends (no tuner
    yet, where the kernels have not been imported: nothing to forget)."""
    if kernel in _tuners:
        _tuners[kernel].cache.clear()
    for key in [k for k in chosen if k[0] == kernel]:
        del chosen[key]
    launch.forget(kernel)


def _tile(config: triton.Config) -> Tile:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


def configs(kernel: str) -> list[triton.Config]:
    tiles = [INTERPRETER_TILE] if INTERPRET else CONFIGS[kernel]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]


def prune_for(kernel: str):
    """The autotuner's early prune for one kernel: the tiles `kept_tiles` allows on this device, or the forced one."""

    def prune(candidates: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if INTERPRET:
            return candidates
        if kernel in _forced:
            return [c for c in candidates if _tile(c) == _forced[kernel]]
        args = {**named_args, **kwargs}
        q = args["Q"]
        block_d = max(args["BLOCK_D"], args["BLOCK_DV"])
        features = (args["MASK_KIND"], args["HAS_DROPOUT"], args["VARLEN"], args["HAS_LEFT"], args["GROUP"] != 1)
        kind = kind_of(kernel, q.dtype, *features)
        live = launch_features(kernel, *features)
        allowed = kept_tiles(kernel, device_arch(q), bool(args["USE_TMA"]), block_d, kind, live)
        if args.get("PART", 0) and kind == "tile":  # a split launch with extra state: its own row
            one = split_kind(
                kernel, q.dtype, args["MASK_KIND"], args["HAS_DROPOUT"], args["VARLEN"], args["HAS_LEFT"],
                args["GROUP"] != 1, block_d,
            )  # fmt: skip
            row = split_row(one, args.get("HALF", 0))
            allowed = split_tiles(device_arch(q), bool(args["USE_TMA"]), block_d, row) or allowed
        return [c for c in candidates if _tile(c) in allowed] or candidates[-1:]

    return prune


def tuned(kernel):
    """``kernel`` behind an autotuner over its tile list, pruned per variant, results cached on disk."""
    name = kernel.__name__
    key = AUTOTUNE_KEY + [k for k in ("PART", "HALF") if k in kernel.arg_names]  # a kernel's launches tune apart
    _tuners[name] = triton.autotune(
        configs(name), key=key, prune_configs_by={"early_config_prune": prune_for(name)}, cache_results=True
    )(kernel)
    return _tuners[name]
