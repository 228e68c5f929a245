"""Host side of the fused kernels: launchers, and the ``torch.library`` ops that make them autograd- and
``torch.compile``-friendly.

Three layers (as flash-attention's interface): `flash_attention` / `flash_attention_varlen` (shapes, the dropout
seed, the band) -> ``fusedlayers::flash_attention_*`` custom ops with fake implementations (so
``torch.compile(fullgraph=True)`` traces through them) and registered autograd -> the Triton kernels.

Every operand's last dimension is made contiguous here (a copy only where it is not: e.g. the stride-0 gradient
that ``.sum().backward()`` hands the backward), so the kernels always see a unit last stride, which the JIT turns
into a constant; the other dimensions are read through their strides (no copies for transposed or head-split
views), and a mask broadcast to ``(B, H, L, S)`` keeps stride 0 on its broadcast dimensions.

**Band.** ``window_left``/``window_right`` bound the keys a query sees relative to its diagonal (``-1`` = no bound);
top-left causal is ``(-1, 0)``; ``lower_right`` aligns the diagonal to the bottom-right corner (``S - L``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable

import torch
import triton

from ..masks import band_of
from . import launch as direct
from .bwd import attn_bwd_dkdv, attn_bwd_dq, attn_bwd_preprocess
from .common import grid_blocks
from .decode import attn_decode_combine, attn_decode_split
from .fwd import attn_fwd
from .tiles import (
    GROUPS_KIND,
    HALVES_KIND,
    INTERPRET,
    PREPROCESS_BLOCK,
    block_dim,
    cdiv,
    chosen,
    device_arch,
    dq_halves,
    halves_on_pointers,
    kind_of,
    length_key,
    next_pow2,
    split_kind,
    split_tiles,
    tuned,
)

attn_fwd_tuned, attn_bwd_dkdv_tuned, attn_bwd_dq_tuned = (tuned(k) for k in (attn_fwd, attn_bwd_dkdv, attn_bwd_dq))
log = logging.getLogger(__name__)

# Whether the copy-engine (tensor descriptor) path may be used: on CUDA it is used on compute capability 9.0 and
# later when every operand is 16-byte aligned (`use_tma`); under the interpreter both paths run (the tests set
# this to exercise each).
DESCRIPTORS = True


def contiguous_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a unit last stride (a copy only where it has another one)."""
    return t if t.stride(-1) == 1 or t.size(-1) == 1 else t.contiguous()


def use_tma(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may read and write these tensors through tensor descriptors: a Hopper or later GPU (or
    the interpreter), every base address and every stride but the last a multiple of 16 bytes."""
    if not DESCRIPTORS:
        return False
    device = tensors[0].device
    if device.type == "cuda" and device_arch(tensors[0]) < 90:
        return False
    if device.type != "cuda" and not INTERPRET:
        return False
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or t.stride(-1) != 1 or any(s * size % 16 for s in t.stride()[:-1]):
            return False
    return True


def _allocator(size: int, alignment: int, stream) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator(device: torch.device) -> None:
    """Device-side tensor descriptors need a scratch allocation per launch. Triton's allocator is a context
    variable, so it is checked on every launch (autograd runs the backward on another thread); a user's own
    allocator is left in place."""
    if device.type != "cuda":
        return
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_allocator)


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor, S: int) -> tuple[torch.Tensor | None, tuple[int, ...], int]:
    """The mask as kernel arguments: tensor, strides over (B, H, L, S), and its kind (0 none, 1 bool, 2 add)."""
    if mask is None:
        return None, (0, 0, 0, 0), 0
    B, H, L, _ = q.shape
    mask = mask.expand(B, H, L, S)  # stride 0 on broadcast dims, nothing copied
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), mask.stride(), 1
    return mask, mask.stride(), 2


class _Layout:
    """How the kernels index one call: dense ``(B, H, L, D)`` tensors, or packed ``(T, H, D)`` ones with offsets.

    Packed tensors are passed with batch stride 0; each program finds its sequence in ``cu_q``/``cu_k`` on the
    device (no host synchronisation), and the grid has ``cdiv(T, block) + B`` programs (`common._find_sequence`).
    """

    def __init__(self, q, k, cu_q=None, cu_k=None):
        self.varlen = cu_q is not None
        if self.varlen:
            self.batch, self.heads, self.kv_heads = cu_q.numel() - 1, q.size(1), k.size(1)
            self.L = self.S = 0  # per sequence, from the offsets
            self.TQ, self.TK = q.size(0), k.size(0)
            self.cu_q, self.cu_k = cu_q, cu_k
        else:
            self.batch, self.heads, self.L = q.shape[:3]
            self.kv_heads, self.S = k.size(1), k.size(2)
            self.TQ, self.TK = q.size(2), k.size(2)
            self.cu_q = self.cu_k = None

    def strides(self, t: torch.Tensor) -> tuple[int, int, int]:
        """(batch, head, row) strides; packed (T, H, D) tensors have no batch dimension."""
        return (0, t.stride(1), t.stride(0)) if self.varlen else tuple(t.stride()[:3])

    def lse_shape(self) -> tuple[int, int]:
        return (self.heads, self.TQ) if self.varlen else (self.batch * self.heads, self.L)

    def grid(self, block: int, keys: bool = False) -> int:
        tokens, length = (self.TK, self.S) if keys else (self.TQ, self.L)
        return grid_blocks(tokens, self.batch, block, self.varlen, length)

    def scalars(self, D: int, DV: int, scale: float, dropout_p: float, left: int, right: int) -> tuple:
        """The kernels' scalar arguments ``B .. right`` (the same list for all three)."""
        return (
            self.batch, self.heads, self.heads // self.kv_heads, self.L, self.S, D, DV, self.TQ,
            length_key(self.TQ), length_key(self.TK), scale, dropout_p, max(left, 0), max(right, 0),
        )  # fmt: skip


def _constexprs(q, v, mask_kind, dropout_p, left, right, lower_right, allow_tf32, layout, tma) -> dict:
    D, DV = q.size(-1), v.size(-1)
    return {
        "HAS_LEFT": left >= 0, "HAS_RIGHT": right >= 0, "LOWER_RIGHT": bool(lower_right), "MASK_KIND": mask_kind,
        "HAS_DROPOUT": dropout_p > 0, "PRECISION": "tf32" if allow_tf32 else "ieee", "VARLEN": layout.varlen,
        "USE_TMA": tma, "EVEN_D": block_dim(D) == D and block_dim(DV) == DV,
        "BLOCK_D": block_dim(D), "BLOCK_DV": block_dim(DV),
    }  # fmt: skip


@dataclasses.dataclass
class Launch:
    """One kernel launch as the launchers make it: the offline compile check compiles exactly these arguments."""

    kernel: str  # a key of KERNELS
    grid: Callable[[dict], tuple[int, ...]]
    args: tuple
    kwargs: dict


KERNELS = {
    "attn_decode_split": attn_decode_split,
    "attn_decode_combine": attn_decode_combine,
    "attn_fwd": attn_fwd_tuned,
    "attn_bwd_preprocess": attn_bwd_preprocess,
    "attn_bwd_dkdv": attn_bwd_dkdv_tuned,
    "attn_bwd_dq": attn_bwd_dq_tuned,
}


def _run(launch: Launch) -> None:
    """Launch: directly where the same launch ran before (`launch.launch`), else through the autotuner (skipping
    its per-call bookkeeping where it chose a tile for this key before) or the JIT; either way as Triton would."""
    args, kwargs = launch.args, launch.kwargs
    if kwargs.get("USE_TMA"):
        _ensure_allocator(args[0].device)
    kernel = KERNELS[launch.kernel]
    tuner = kernel if isinstance(kernel, triton.runtime.Autotuner) else None
    config = chosen.get(tuning_key(launch)) if tuner is not None else None
    if tuner is None or config is not None:
        extra = config.all_kwargs() if config is not None else {}
        if direct.launch(launch.kernel, launch.grid, args, kwargs, extra):
            return
        fn = tuner.fn if tuner is not None else kernel
        compiled = fn.run(*args, grid=launch.grid, warmup=False, **kwargs, **extra)
        direct.remember(launch.kernel, fn, compiled, args, kwargs, extra)
        return
    known = len(tuner.cache)
    start = time.perf_counter()
    tuner[launch.grid](*args, **kwargs)
    if tuner.best_config.pre_hook is None:
        chosen[tuning_key(launch)] = tuner.best_config
    if len(tuner.cache) > known:
        # a new autotune key: its tiles were compiled (unless cached on disk) and timed, which takes seconds on a
        # GPU; said once per key, so a slow first step is explained
        log.info("%s: tuned for a new shape in %.1f s, chose %s", launch.kernel, time.perf_counter() - start,
                 tuner.best_config)  # fmt: skip


@functools.cache
def _key_positions(kernel: str, positional: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Where a kernel's autotune key values are in its launches (which pass the first ``positional`` parameters by
    position, the constexprs by name): positional indices, and keyword names."""
    tuner = KERNELS[kernel]
    index = {name: i for i, name in enumerate(tuner.arg_names)}
    return (
        tuple(index[k] for k in tuner.keys if index[k] < positional),
        tuple(k for k in tuner.keys if index[k] >= positional),
    )


def tuning_key(launch: Launch) -> tuple:
    """What the autotuner keys this launch on (its key values, and every argument's dtype), as a hashable tuple:
    the launches that share it share the tile the autotuner chose (`chosen`)."""
    positions, names = _key_positions(launch.kernel, len(launch.args))
    args, kwargs = launch.args, launch.kwargs
    return (
        launch.kernel,
        tuple(args[i] for i in positions),
        tuple(kwargs[k] for k in names),
        tuple(getattr(a, "dtype", None) for a in args),
    )


def forward_launch(q, k, v, mask, seed, dropout_p, scale, left, right, lower_right, allow_tf32, layout, tma=None):
    """The forward launch and its outputs ``(launch, out, lse)``; ``tma=None`` decides the path (`use_tma`)."""
    q, k, v = (contiguous_last(t) for t in (q, k, v))
    D, DV = q.size(-1), v.size(-1)
    out = q.new_empty(*q.shape[:-1], DV)
    lse = torch.empty(layout.lse_shape(), device=q.device, dtype=torch.float32)
    mask_t, mask_strides, mask_kind = _mask_args(mask, q, layout.S)
    tma = use_tma(q, k, v, out) if tma is None else tma
    consts = _constexprs(q, v, mask_kind, dropout_p, left, right, lower_right, allow_tf32, layout, tma)
    bh = (1 if layout.varlen else layout.batch) * layout.heads
    args = (
        q, k, v, mask_t, out, lse, seed, layout.cu_q, layout.cu_k,
        *layout.strides(q), *layout.strides(k), *layout.strides(v), *mask_strides, *layout.strides(out),
        *layout.scalars(D, DV, scale, dropout_p, left, right),
    )  # fmt: skip
    return Launch("attn_fwd", lambda meta: (layout.grid(meta["BLOCK_M"]), bh), args, consts), out, lse


def backward_launches(
    grad_out, q, k, v, mask, seed, out, lse, dropout_p, scale, left, right, lower_right, allow_tf32, layout, tma=None,
    arch=None, parts=None,
):  # fmt: skip
    """The backward's launches (preprocess, dK/dV, dQ; dK/dV and dQ each in parts where `dkdv_parts` and
    `dq_parts` say) and the gradients they fill ``(launches, dq, dk, dv)``. ``arch``: the compute capability
    compiled for (default: the device's; 90 for CPU tensors, as the autotuner's prune assumes); ``parts``: per
    kernel name, the launches to build instead of `dkdv_parts`' ``(PART, HALF)`` pairs or `dq_parts`' halves (the
    compile check measures tiles for launches the table does not choose yet)."""
    parts = parts or {}
    grad_out, q, k, v, out = (contiguous_last(t) for t in (grad_out, q, k, v, out))
    D, DV = q.size(-1), v.size(-1)
    H, Hk = layout.heads, layout.kv_heads
    mask_t, mask_strides, mask_kind = _mask_args(mask, q, layout.S)
    # delta = rowsum(dO * O), laid out like the log-sum-exp: packed tensors are one "batch" of TQ rows.
    rows = layout.TQ if layout.varlen else layout.L
    bh = 1 if layout.varlen else layout.batch
    delta = torch.empty(layout.lse_shape(), device=q.device, dtype=torch.float32)
    pre = Launch(
        "attn_bwd_preprocess", (cdiv(rows, PREPROCESS_BLOCK), bh * H),
        (out, grad_out, delta, *layout.strides(out), *layout.strides(grad_out), H, rows, DV),
        {"BLOCK_M": PREPROCESS_BLOCK, "BLOCK_DV": block_dim(DV)},
    )  # fmt: skip
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    arch = device_arch(q) if arch is None else arch
    tma = use_tma(q, k, v, grad_out, dq, dk, dv) if tma is None else tma
    consts = _constexprs(q, v, mask_kind, dropout_p, left, right, lower_right, allow_tf32, layout, tma)
    common = (
        *layout.strides(q), *layout.strides(k), *layout.strides(v), *mask_strides, *layout.strides(grad_out)
    )  # fmt: skip
    scalars = layout.scalars(D, DV, scale, dropout_p, left, right)
    offsets = (layout.cu_q, layout.cu_k)
    features = (q.dtype, mask_kind, dropout_p > 0, layout.varlen, left >= 0, Hk != H)  # what decides a kind
    planned_pairs, pointers, planned_halves = _backward_plan(arch, D, DV, tma, features)
    pairs = parts.get("attn_bwd_dkdv") or planned_pairs
    dkdv = [
        Launch(
            "attn_bwd_dkdv", lambda meta: (layout.grid(meta["BLOCK_N"], keys=True), bh * Hk),
            (q, k, v, mask_t, grad_out, lse, delta, dk, dv, seed, *offsets, *common, *layout.strides(dk),
             *layout.strides(dv), *scalars),
            {**consts, "PART": part, "HALF": half, "USE_TMA": tma and not (half and pointers)},
        )
        for part, half in pairs
    ]  # fmt: skip
    dq_launches = [
        Launch(
            "attn_bwd_dq", lambda meta: (layout.grid(meta["BLOCK_M"]), bh * H),
            (q, k, v, mask_t, grad_out, lse, delta, dq, seed, *offsets, *common, *layout.strides(dq), *scalars),
            {**consts, "HALF": half},
        )
        for half in parts.get("attn_bwd_dq") or planned_halves
    ]  # fmt: skip
    return [pre, *dkdv, *dq_launches], dq, dk, dv


@functools.lru_cache(maxsize=512)
def _backward_plan(arch: int, D: int, DV: int, tma: bool, features: tuple) -> tuple:
    """``(dK/dV's (PART, HALF) pairs, whether its halves load through pointers, dQ's halves)`` for a backward call:
    the same few answers for every step of a training run, so decided once per kind of call, not per launch."""
    pointers = halves_on_pointers(*features[1:])  # dK/dV's halves on pointers: the copy engine's spill there
    split = split_kind("attn_bwd_dkdv", *features, max(block_dim(D), block_dim(DV)))
    pairs = dkdv_parts(arch, D, DV, kind_of("attn_bwd_dkdv", *features), tma, split, pointers)
    return pairs, pointers, dq_parts(arch, tma, D, kind_of("attn_bwd_dq", *features))


def dq_parts(arch: int, tma: bool, D: int, kind: str) -> tuple[int, ...]:
    """The dQ kernel's launches: one over the whole head dim (``HALF`` 0), or one per half of it (1, 2) where
    `tiles.dq_halves` says so."""
    return (1, 2) if dq_halves(arch, tma, block_dim(D), kind) else (0,)


def dkdv_parts(
    arch: int, D: int, DV: int, kind: str, tma: bool = True, split: str | None = None, pointers: bool = False
) -> tuple[tuple[int, int], ...]:
    """The dK/dV kernel's launches as ``(PART, HALF)`` pairs (`attn_bwd_dkdv`): one for both, ``(0, 0)``; on sm_90,
    where the installed Triton's table keeps a spill-free ``wgmma`` tile for them, one for dV and one for dK,
    ``(1, 0), (2, 0)`` (each with one accumulator): at head dim 128 with grouped heads and a mask or dropout live
    (``split`` "tile-gqa-128"), above it without extra state (kind "plain") or with one feature of it
    (``split``, `tiles.split_kind`); else above 128, with several features live (or one whose row is empty), each
    of those once per half of its columns, ``(1, 1), (1, 2), (2, 1), (2, 2)`` (the "tile-halves" row; on the
    pointer path with ``pointers``, `tiles.halves_on_pointers`). Where none of these serves, and on sm_80 (no
    ``wgmma`` to gain): one launch."""
    block = max(block_dim(D), block_dim(DV))
    if arch < 90:
        return ((0, 0),)
    if block <= 128:  # one launch, but with grouped heads and more (`split`: its row) where a split tile is kept
        split_tile = split == GROUPS_KIND and split_tiles(arch, tma, block, split)
        return ((1, 0), (2, 0)) if split_tile else ((0, 0),)
    if kind == "plain" or (split != HALVES_KIND and split_tiles(arch, tma, block, split)):
        return ((1, 0), (2, 0))
    halvable = min(block_dim(D), block_dim(DV)) >= 32  # each half a product over >= 16 columns (tl.dot's least)
    if split is not None and halvable and split_tiles(arch, tma and not pointers, block, HALVES_KIND):
        return ((1, 1), (1, 2), (2, 1), (2, 2))
    return ((0, 0),)


def _forward(*args) -> tuple[torch.Tensor, torch.Tensor]:
    launch, out, lse = forward_launch(*args)
    _run(launch)
    return out, lse


def _backward(*args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    launches, dq, dk, dv = backward_launches(*args)
    for launch in launches:
        _run(launch)
    return dq, dk, dv


@torch.library.custom_op("fusedlayers::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    window_left: int,
    window_right: int,
    lower_right: bool,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, H, L, D)``, ``k (B, Hk, S, D)``, ``v (B, Hk, S, Dv)`` -> ``out (B, H, L, Dv)``, ``lse (B * H, L)``."""
    band = (window_left, window_right, lower_right)
    return _forward(q, k, v, mask, seed, dropout_p, scale, *band, allow_tf32, _Layout(q, k))


@flash_attention_fwd.register_fake
def _(q, k, v, mask, seed, dropout_p, scale, window_left, window_right, lower_right, allow_tf32):
    B, H, L, _ = q.shape
    return q.new_empty(B, H, L, v.size(3)), q.new_empty(B * H, L, dtype=torch.float32)


@torch.library.custom_op("fusedlayers::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    seed: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    dropout_p: float,
    scale: float,
    window_left: int,
    window_right: int,
    lower_right: bool,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k, v (the shapes of q, k, v) from the saved output and log-sum-exp."""
    options = (dropout_p, scale, window_left, window_right, lower_right, allow_tf32)
    return _backward(grad_out, q, k, v, mask, seed, out, lse, *options, _Layout(q, k))


@flash_attention_bwd.register_fake
def _(grad_out, q, k, v, mask, seed, out, lse, dropout_p, scale, window_left, window_right, lower_right, allow_tf32):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, mask, seed, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, seed, out, lse)
    ctx.options = options


def _backward_dense(ctx, grad_out, grad_lse):
    q, k, v, mask, seed, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(grad_out, q, k, v, mask, seed, out, lse, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None, None, None


flash_attention_fwd.register_autograd(_backward_dense, setup_context=_setup_context)


@torch.library.custom_op("fusedlayers::flash_attention_varlen_fwd", mutates_args=())
def flash_attention_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    seed: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    window_left: int,
    window_right: int,
    lower_right: bool,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``q (Tq, H, D)``, ``k (Tk, Hk, D)``, ``v (Tk, Hk, Dv)`` with int32 offsets ``(B + 1,)`` ->
    ``out (Tq, H, Dv)``, ``lse (H, Tq)``: one launch for the whole batch, no padding."""
    band = (window_left, window_right, lower_right)
    return _forward(q, k, v, None, seed, dropout_p, scale, *band, allow_tf32, _Layout(q, k, cu_q, cu_k))


@flash_attention_varlen_fwd.register_fake
def _(q, k, v, cu_q, cu_k, seed, dropout_p, scale, window_left, window_right, lower_right, allow_tf32):
    return q.new_empty(*q.shape[:-1], v.size(-1)), q.new_empty(q.size(1), q.size(0), dtype=torch.float32)


@torch.library.custom_op("fusedlayers::flash_attention_varlen_bwd", mutates_args=())
def flash_attention_varlen_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    seed: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    dropout_p: float,
    scale: float,
    window_left: int,
    window_right: int,
    lower_right: bool,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    options = (dropout_p, scale, window_left, window_right, lower_right, allow_tf32)
    return _backward(grad_out, q, k, v, None, seed, out, lse, *options, _Layout(q, k, cu_q, cu_k))


@flash_attention_varlen_bwd.register_fake
def _(grad_out, q, k, v, cu_q, cu_k, seed, out, lse, dropout_p, scale, window_left, window_right, lower_right,
      allow_tf32):  # fmt: skip
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_varlen(ctx, inputs, output) -> None:
    q, k, v, cu_q, cu_k, seed, *options = inputs
    ctx.save_for_backward(q, k, v, cu_q, cu_k, seed, *output)
    ctx.options = options


def _backward_varlen(ctx, grad_out, grad_lse):
    q, k, v, cu_q, cu_k, seed, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_varlen_bwd(grad_out, q, k, v, cu_q, cu_k, seed, out, lse, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


flash_attention_varlen_fwd.register_autograd(_backward_varlen, setup_context=_setup_varlen)


class _Dense(torch.autograd.Function):
    """``fusedlayers::flash_attention_fwd`` and its registered backward, for eager calls (`_eager`): the same
    launches without the dispatcher's per-call work for a custom op with autograd (its argument handling alone
    measured ~140 us a call on a 2-core CPU, torch 2.13), which a GPU step pays on the host for every layer."""

    @staticmethod
    def forward(ctx, q, k, v, mask, seed, *options):
        out, lse = _forward(q, k, v, mask, seed, *options, _Layout(q, k))
        ctx.save_for_backward(q, k, v, mask, seed, out, lse)
        ctx.options = options
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, mask, seed, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, mask, seed, out, lse, *ctx.options, _Layout(q, k))
        return dq, dk, dv, *(None,) * (2 + len(ctx.options))


class _Packed(torch.autograd.Function):
    """``fusedlayers::flash_attention_varlen_fwd`` and its backward, for eager calls (as `_Dense`)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, seed, *options):
        out, lse = _forward(q, k, v, None, seed, *options, _Layout(q, k, cu_q, cu_k))
        ctx.save_for_backward(q, k, v, cu_q, cu_k, seed, out, lse)
        ctx.options = options
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, cu_q, cu_k, seed, out, lse = ctx.saved_tensors
        layout = _Layout(q, k, cu_q, cu_k)
        dq, dk, dv = _backward(grad_out, q, k, v, None, seed, out, lse, *ctx.options, layout)
        return dq, dk, dv, *(None,) * (3 + len(ctx.options))


def _eager(*tensors: torch.Tensor | None) -> bool:
    """Whether a call may run `_Dense`/`_Packed` instead of the custom ops: plain tensors, and nothing that traces
    or transforms them (``torch.compile``/``torch.export``, the TorchScript tracer, functorch transforms, a
    dispatch mode such as fake tensors): those see the ops, as they always did."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active():
        return False
    if any(t is not None and type(t) is not torch.Tensor for t in tensors):
        return False
    return _current_dispatch_mode() is None


def _current_dispatch_mode():
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode()


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    window: tuple[int, int] = (-1, -1),
    lower_right: bool = False,
) -> torch.Tensor:
    """F.sdpa's contract on the fused kernels (dense inputs that passed `validate_sdpa_args`); ``window`` is the
    band ``(left, right)`` (-1: unbounded), which ``is_causal`` sets to ``(-1, 0)``; a band mask
    (`kernels.masks.Band`, torch's ``CausalBias``) as ``attn_mask`` sets both, and no mask tensor is built."""
    band = band_of(attn_mask)
    if band is not None:
        attn_mask, window, lower_right = None, band.window(), band.lower_right
    batch_shape = query.shape[:-3] if query.dim() >= 3 else ()
    q, k, v = (_as_4d(t) for t in (query, key, value))
    mask = None
    if attn_mask is not None:
        mask = attn_mask.expand(*batch_shape, q.size(1), q.size(2), k.size(2)) if attn_mask.dim() else attn_mask
        mask = mask.reshape(q.size(0), q.size(1), q.size(2), k.size(2))
    options = _scalar_options(query, dropout_p, is_causal, scale, window, lower_right)
    op = _Dense.apply if _eager(q, k, v, mask) else flash_attention_fwd
    out, _ = op(q, k, v, mask, *options)
    return out.reshape(*query.shape[:-1], value.size(-1))


def flash_attention_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    attn_mask=None,
    *,
    window: tuple[int, int] = (-1, -1),
    lower_right: bool = False,
) -> torch.Tensor:
    """`kernels.varlen_attention`'s contract on the fused kernels: packed ``(T, H, E)`` tensors and offsets; a band
    mask applies to each sequence with its own lengths."""
    band = band_of(attn_mask)
    if band is not None:
        window, lower_right = band.window(), band.lower_right
    cu_q, cu_k = (c.to(device=query.device, dtype=torch.int32) for c in (cu_seqlens_q, cu_seqlens_k))
    options = _scalar_options(query, dropout_p, is_causal, scale, window, lower_right)
    op = _Packed.apply if _eager(query, key, value, cu_q, cu_k) else flash_attention_varlen_fwd
    out, _ = op(query, key, value, cu_q, cu_k, *options)
    return out


def _scalar_options(
    query: torch.Tensor, dropout_p: float, is_causal: bool, scale: float | None, window: tuple[int, int],
    lower_right: bool,
) -> tuple:  # fmt: skip
    """(seed, dropout_p, scale, window_left, window_right, lower_right, allow_tf32) as the ops take them. The seed
    comes from torch's generator (so torch.manual_seed reproduces a run), as a tensor: no host sync."""
    seed = torch.randint(0, 2**31 - 1, (1,), device=query.device) if dropout_p > 0 else None
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    left, right = window
    if is_causal:
        right = 0 if right < 0 else min(right, 0)
    return (
        seed,
        float(dropout_p),
        scale,
        int(left),
        int(right),
        bool(lower_right),
        torch.backends.cuda.matmul.allow_tf32,
    )


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """(..., H, L, E) -> (B, H, L, E) (a view where the batch dims allow); (L, E) -> (1, 1, L, E)."""
    if t.dim() == 2:
        return t[None, None]
    return t.reshape(-1, *t.shape[-3:])


DECODE_BLOCK_N = 64
DECODE_SPLIT = 256  # keys per program (a multiple of DECODE_BLOCK_N): long caches get many programs


def decode_launches(q, k_cache, v_cache, lengths, scale: float, allow_tf32: bool) -> tuple[list[Launch], torch.Tensor]:
    """The launches of `decode_attention` (the split kernel, then the combine) and the output they fill."""
    q, k_cache, v_cache = (contiguous_last(t) for t in (q, k_cache, v_cache))
    B, H, T, D = q.shape
    Hk, max_len, DV = k_cache.size(1), k_cache.size(2), v_cache.size(-1)
    group = H // Hk
    block_m = max(16, next_pow2(T * group))
    splits = max(1, cdiv(max_len, DECODE_SPLIT))
    acc = torch.empty(B * Hk, splits, block_m, block_dim(DV), device=q.device, dtype=torch.float32)
    m = torch.empty(B * Hk, splits, block_m, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    out = q.new_empty(B, H, T, DV)
    args = (
        q, k_cache, v_cache, lengths, acc, m, l_sum, *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        Hk, group, T, D, DV, DECODE_SPLIT, scale,
    )  # fmt: skip
    kwargs = {
        "PRECISION": "tf32" if allow_tf32 else "ieee", "EVEN_D": block_dim(D) == D and block_dim(DV) == DV,
        "BLOCK_M": block_m, "BLOCK_N": DECODE_BLOCK_N, "BLOCK_D": block_dim(D), "BLOCK_DV": block_dim(DV),
        "num_warps": 4, "num_stages": 2,
    }  # fmt: skip
    split = Launch("attn_decode_split", (splits, B * Hk), args, kwargs)
    combine = Launch(
        "attn_decode_combine", (B * Hk,), (acc, m, l_sum, out, *out.stride()[:3], Hk, group, T, DV, splits),
        {"BLOCK_M": block_m, "BLOCK_DV": block_dim(DV), "num_warps": 4, "num_stages": 1},
    )  # fmt: skip
    return [split, combine], out


@torch.library.custom_op("fusedlayers::decode_attention", mutates_args=())
def decode_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float, allow_tf32: bool
) -> torch.Tensor:
    """``q (B, H, T, D)``, caches ``(B, Hk, max_len, *)``, ``lengths (B,)`` -> ``(B, H, T, Dv)`` (`decode.py`)."""
    return _decode(q, k_cache, v_cache, lengths, scale, allow_tf32)


def _decode(q, k_cache, v_cache, lengths, scale: float, allow_tf32: bool) -> torch.Tensor:
    launches, out = decode_launches(q, k_cache, v_cache, lengths, scale, allow_tf32)
    for launch in launches:
        _run(launch)
    return out


def decode_attention(q, k_cache, v_cache, lengths, scale: float, allow_tf32: bool) -> torch.Tensor:
    """`decode_attention_op`, or in eager calls its launches without the op's dispatch (`_eager`): a decoding step
    is a chain of small calls whose host time adds up."""
    if _eager(q, k_cache, v_cache, lengths):
        return _decode(q, k_cache, v_cache, lengths, scale, allow_tf32)
    return decode_attention_op(q, k_cache, v_cache, lengths, scale, allow_tf32)


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, lengths, scale, allow_tf32):
    return q.new_empty(*q.shape[:-1], v_cache.size(-1))
