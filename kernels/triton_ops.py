"""Host side of the fused kernels: launchers, and the ``torch.library`` ops that make them autograd- and
``torch.compile``-friendly.

Three layers (as flash-attention's interface): `flash_attention` (shapes, the dropout seed) ->
``fusedlayers::flash_attention_fwd`` / ``fusedlayers::flash_attention_bwd`` (custom ops with fake
implementations, so ``torch.compile(fullgraph=True)`` traces through them) -> the Triton kernels.
Inputs are read through their strides (no ``.contiguous()`` copies; an expanded upstream gradient with
stride 0 is fine), and a mask broadcast to ``(B, H, L, S)`` keeps stride 0 on its broadcast dimensions.
"""

from __future__ import annotations

import math
import os

import torch
import triton

from .triton_bwd import attn_bwd_dkdv, attn_bwd_dq, attn_bwd_preprocess
from .triton_fwd import attn_fwd

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries on a GPU, in a module-level list so the
# offline compile check (`python -m kernels.compile_check`) covers exactly these; `prune` drops those that
# would not fit large head dims. The interpreter cannot benchmark: it gets one config (TRITON-NOTES.md).
CONFIGS = [
    (128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 1),
    (32, 16, 4, 1), (16, 32, 4, 1), (16, 16, 4, 1), (16, 16, 2, 1),
    (16, 32, 8, 1), (16, 16, 8, 1), (32, 32, 8, 1),  # 8 warps: head dims above 128, and dK/dV with a tile
]  # fmt: skip
INTERPRETER_CONFIG = (32, 32, 4, 1)
AUTOTUNE_KEY = ["L", "S", "D", "DV", "IS_CAUSAL", "MASK_KIND", "HAS_DROPOUT"]
_ALL = CONFIGS[:6]
# The tiles that compile without register spills on both sm_80 and sm_90 (measured with the compile check,
# triton 3.9), per kernel, head-dim bucket (BLOCK_D <= 64, 128 or 256) and kind: "plain", "tile" (a mask or
# dropout tile is live), "varlen" (the variable-length mode) or "fp32" (float32 operands, twice the registers).
SPILL_FREE = {
    "attn_fwd": {
        (64, "plain"): [t for t in _ALL if t != (64, 64, 4, 3)],
        (64, "tile"): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 4, 1)],
        (128, "plain"): [(128, 32, 8, 2), (32, 16, 4, 1), (16, 32, 4, 1)],
        (128, "tile"): [(32, 16, 4, 1), (16, 16, 4, 1)],
        (256, "plain"): [(16, 16, 8, 1)],
        (256, "tile"): [(16, 16, 8, 1)],
    },
    "attn_bwd_dkdv": {
        (64, "plain"): _ALL[1:],
        (64, "tile"): [(32, 32, 8, 1)],
        (64, "fp32"): [(16, 32, 8, 1)],
        (64, "varlen"): [(32, 16, 4, 1), (16, 32, 8, 1)],
        (128, "plain"): [(64, 32, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1)],
        (128, "tile"): [(32, 16, 4, 1)],
        (256, "plain"): [(16, 32, 8, 1), (32, 32, 8, 1)],
        (256, "tile"): [(16, 32, 8, 1)],
        (256, "fp32"): [(16, 16, 8, 1)],
    },
    "attn_bwd_dq": {
        (64, "plain"): [(128, 32, 8, 2), (64, 32, 4, 2), (32, 32, 4, 1)],
        (64, "tile"): [(32, 32, 4, 1), (32, 16, 4, 1), (16, 32, 4, 1)],
        (128, "plain"): [(16, 32, 4, 1), (32, 16, 4, 1)],
        (128, "tile"): [(32, 16, 4, 1), (16, 16, 4, 1)],
        (256, "plain"): [(16, 16, 8, 1)],
        (256, "tile"): [(16, 16, 8, 1)],
    },
}


def spill_free_tiles(
    kernel_name: str, block_d: int, tile_live: bool, fp32: bool, varlen: bool = False
) -> list[tuple[int, int, int, int]]:
    """The row of SPILL_FREE for a variant: its own "fp32" or "varlen" row where the table has one, else
    "tile" for any of mask, dropout, float32 or variable length, else "plain"."""
    bucket = next(b for b in (64, 128, 256) if block_d <= b)
    table = SPILL_FREE[kernel_name]
    for kind, applies in (("fp32", fp32), ("varlen", varlen)):
        if applies and (bucket, kind) in table:
            return table[(bucket, kind)]
    return table[(bucket, "tile" if tile_live or fp32 or varlen else "plain")]


def configs() -> list[triton.Config]:
    tiles = [INTERPRETER_CONFIG] if INTERPRET else CONFIGS
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in tiles]


def _tile(config: triton.Config) -> tuple[int, int, int, int]:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


def prune_for(kernel_name: str):
    """The autotuner's early prune for one kernel: keep the spill-free tiles of the variant (SPILL_FREE)."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if INTERPRET:
            return configs
        args = {**named_args, **kwargs}
        fp32 = getattr(args.get("Q"), "dtype", None) == torch.float32
        tile_live = bool(args.get("HAS_DROPOUT")) or bool(args.get("MASK_KIND"))
        block_d = max(args["BLOCK_D"], args["BLOCK_DV"])
        allowed = spill_free_tiles(kernel_name, block_d, tile_live, fp32, bool(args.get("VARLEN")))
        return [c for c in configs if _tile(c) in allowed] or configs[-1:]

    return prune


def _tuned(kernel):
    """The kernel behind an autotuner with the module's configs and its prune rule."""
    prune = prune_for(kernel.__name__)
    return triton.autotune(configs(), key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": prune})(kernel)


attn_fwd_tuned, attn_bwd_dkdv_tuned, attn_bwd_dq_tuned = (_tuned(k) for k in (attn_fwd, attn_bwd_dkdv, attn_bwd_dq))


PREPROCESS_BLOCK = 32


def _block(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))  # tl.dot needs K >= 16; non-powers of two are masked


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor, S: int) -> tuple[torch.Tensor, tuple[int, ...], int]:
    """The mask as kernel arguments: tensor, strides over (B, H, L, S), and its kind (0 none, 1 bool, 2 add)."""
    if mask is None:
        return q, (0, 0, 0, 0), 0
    B, H, L, _ = q.shape
    mask = mask.expand(B, H, L, S)  # stride 0 on broadcast dims, nothing copied
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), mask.stride(), 1
    return mask, mask.stride(), 2


class _Layout:
    """How the kernels index one call: dense (B, H, L, D) tensors, or packed (T, H, D) ones with offsets.

    Packed tensors are passed with batch stride 0; each program reads its sequence's start and length from
    ``cu_q``/``cu_k``; the grid covers ``max_q``/``max_k`` rows (the token counts: an upper bound known
    without reading the offsets, so no host sync; programs past their sequence return at once).
    """

    def __init__(self, q, k, cu_q=None, cu_k=None):
        self.varlen = cu_q is not None
        if self.varlen:
            self.batch, self.heads, self.kv_heads = cu_q.numel() - 1, q.size(1), k.size(1)
            self.L = self.S = 0  # per sequence, from the offsets
            self.TQ, self.TK = q.size(0), k.size(0)
            self.max_q, self.max_k = self.TQ, self.TK
            self.cu_q, self.cu_k = cu_q, cu_k
        else:
            self.batch, self.heads, self.L = q.shape[:3]
            self.kv_heads, self.S = k.size(1), k.size(2)
            self.TQ = self.TK = 0
            self.max_q, self.max_k = self.L, self.S
            self.cu_q = self.cu_k = q.new_zeros(1, dtype=torch.int32)  # never read

    def strides(self, t: torch.Tensor) -> tuple[int, ...]:
        """(batch, head, row, dim) strides; packed (T, H, D) tensors have no batch dimension."""
        return (0, t.stride(1), t.stride(0), t.stride(2)) if self.varlen else tuple(t.stride())

    def lse_shape(self) -> tuple[int, int]:
        return (self.heads, self.TQ) if self.varlen else (self.batch * self.heads, self.L)


def _forward(q, k, v, mask, seed, dropout_p, is_causal, scale, allow_tf32, layout: _Layout):
    D, DV = q.size(-1), v.size(-1)
    out = q.new_empty(*q.shape[:-1], DV)
    lse = torch.empty(layout.lse_shape(), device=q.device, dtype=torch.float32)
    mask_t, mask_strides, mask_kind = _mask_args(mask, q, layout.S)
    H = layout.heads
    attn_fwd_tuned[lambda meta: (triton.cdiv(layout.max_q, meta["BLOCK_M"]), layout.batch * H)](
        q, k, v, mask_t, out, lse, seed, layout.cu_q, layout.cu_k,
        *layout.strides(q), *layout.strides(k), *layout.strides(v), *mask_strides, *layout.strides(out),
        H, H // layout.kv_heads, layout.L, layout.S, D, DV, layout.TQ, layout.TK, scale, dropout_p,
        IS_CAUSAL=is_causal, MASK_KIND=mask_kind, HAS_DROPOUT=dropout_p > 0, ALLOW_TF32=allow_tf32,
        VARLEN=layout.varlen, BLOCK_D=_block(D), BLOCK_DV=_block(DV),
    )  # fmt: skip
    return out, lse


def _backward_kernels(grad_out, q, k, v, mask, seed, out, lse, dropout_p, is_causal, scale, allow_tf32, layout):
    D, DV = q.size(-1), v.size(-1)
    H, Hk = layout.heads, layout.kv_heads
    mask_t, mask_strides, mask_kind = _mask_args(mask, q, layout.S)
    consts = {
        "IS_CAUSAL": is_causal, "MASK_KIND": mask_kind, "HAS_DROPOUT": dropout_p > 0, "ALLOW_TF32": allow_tf32,
        "VARLEN": layout.varlen, "BLOCK_D": _block(D), "BLOCK_DV": _block(DV),
    }  # fmt: skip
    # delta = rowsum(dO * O), laid out like the log-sum-exp: packed tensors are one "batch" of TQ rows.
    rows = layout.TQ if layout.varlen else layout.L
    pre_batch = 1 if layout.varlen else layout.batch
    delta = torch.empty(layout.lse_shape(), device=q.device, dtype=torch.float32)
    attn_bwd_preprocess[(triton.cdiv(rows, PREPROCESS_BLOCK), pre_batch * H)](
        out, grad_out, delta, *layout.strides(out), *layout.strides(grad_out), H, rows, DV,
        BLOCK_M=PREPROCESS_BLOCK, BLOCK_DV=_block(DV),
    )  # fmt: skip
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (
        *layout.strides(q), *layout.strides(k), *layout.strides(v), *mask_strides, *layout.strides(grad_out)
    )  # fmt: skip
    sizes = (H, H // Hk, layout.L, layout.S, D, DV, layout.TQ, layout.TK, scale, dropout_p)
    offsets = (layout.cu_q, layout.cu_k)
    attn_bwd_dkdv_tuned[lambda meta: (triton.cdiv(layout.max_k, meta["BLOCK_N"]), layout.batch * Hk)](
        q, k, v, mask_t, grad_out, lse, delta, dk, dv, seed, *offsets, *common,
        *layout.strides(dk), *layout.strides(dv), *sizes, **consts,
    )  # fmt: skip
    attn_bwd_dq_tuned[lambda meta: (triton.cdiv(layout.max_q, meta["BLOCK_M"]), layout.batch * H)](
        q, k, v, mask_t, grad_out, lse, delta, dq, seed, *offsets, *common, *layout.strides(dq), *sizes, **consts
    )
    return dq, dk, dv


@torch.library.custom_op("fusedlayers::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    seed: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    scale: float,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, H, L, D)``, ``k (B, Hk, S, D)``, ``v (B, Hk, S, Dv)`` -> ``out (B, H, L, Dv)``, ``lse (B * H, L)``."""
    return _forward(q, k, v, mask, seed, dropout_p, is_causal, scale, allow_tf32, _Layout(q, k))


@flash_attention_fwd.register_fake
def _(q, k, v, mask, seed, dropout_p, is_causal, scale, allow_tf32):
    B, H, L, _ = q.shape
    return q.new_empty(B, H, L, v.size(3)), q.new_empty(B * H, L, dtype=torch.float32)


@torch.library.custom_op("fusedlayers::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    seed: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    scale: float,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k, v (the shapes of q, k, v) from the saved output and log-sum-exp."""
    args = (grad_out, q, k, v, mask, seed, out, lse, dropout_p, is_causal, scale, allow_tf32)
    return _backward_kernels(*args, _Layout(q, k))


@flash_attention_bwd.register_fake
def _(grad_out, q, k, v, mask, seed, out, lse, dropout_p, is_causal, scale, allow_tf32):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, mask, seed, dropout_p, is_causal, scale, allow_tf32 = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, seed, out, lse)
    ctx.options = (dropout_p, is_causal, scale, allow_tf32)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, mask, seed, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(grad_out, q, k, v, mask, seed, out, lse, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None


flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("fusedlayers::flash_attention_varlen_fwd", mutates_args=())
def flash_attention_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    seed: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    scale: float,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``q (Tq, H, D)``, ``k (Tk, Hk, D)``, ``v (Tk, Hk, Dv)`` with int32 offsets ``(B + 1,)`` ->
    ``out (Tq, H, Dv)``, ``lse (H, Tq)``: one launch for the whole batch, no padding."""
    return _forward(q, k, v, None, seed, dropout_p, is_causal, scale, allow_tf32, _Layout(q, k, cu_q, cu_k))


@flash_attention_varlen_fwd.register_fake
def _(q, k, v, cu_q, cu_k, seed, dropout_p, is_causal, scale, allow_tf32):
    return q.new_empty(*q.shape[:-1], v.size(-1)), q.new_empty(q.size(1), q.size(0), dtype=torch.float32)


@torch.library.custom_op("fusedlayers::flash_attention_varlen_bwd", mutates_args=())
def flash_attention_varlen_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    seed: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    scale: float,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (grad_out, q, k, v, None, seed, out, lse, dropout_p, is_causal, scale, allow_tf32)
    return _backward_kernels(*args, _Layout(q, k, cu_q, cu_k))


@flash_attention_varlen_bwd.register_fake
def _(grad_out, q, k, v, cu_q, cu_k, seed, out, lse, dropout_p, is_causal, scale, allow_tf32):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_varlen(ctx, inputs, output) -> None:
    q, k, v, cu_q, cu_k, seed, dropout_p, is_causal, scale, allow_tf32 = inputs
    ctx.save_for_backward(q, k, v, cu_q, cu_k, seed, *output)
    ctx.options = (dropout_p, is_causal, scale, allow_tf32)


def _backward_varlen(ctx, grad_out, grad_lse):
    q, k, v, cu_q, cu_k, seed, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_varlen_bwd(grad_out, q, k, v, cu_q, cu_k, seed, out, lse, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None, None


flash_attention_varlen_fwd.register_autograd(_backward_varlen, setup_context=_setup_varlen)


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """F.sdpa's contract on the fused kernels (dense inputs that passed `validate_sdpa_args`)."""
    batch_shape = query.shape[:-3] if query.dim() >= 3 else ()
    q, k, v = (_as_4d(t) for t in (query, key, value))
    mask = None
    if attn_mask is not None:
        mask = attn_mask.expand(*batch_shape, q.size(1), q.size(2), k.size(2)) if attn_mask.dim() else attn_mask
        mask = mask.reshape(q.size(0), q.size(1), q.size(2), k.size(2))
    options = _scalar_options(query, dropout_p, is_causal, scale)
    out, _ = flash_attention_fwd(q, k, v, mask, *options)
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
) -> torch.Tensor:
    """`kernels.varlen_attention`'s contract on the fused kernels: packed ``(T, H, E)`` tensors and offsets."""
    cu_q, cu_k = (c.to(device=query.device, dtype=torch.int32) for c in (cu_seqlens_q, cu_seqlens_k))
    out, _ = flash_attention_varlen_fwd(
        query, key, value, cu_q, cu_k, *_scalar_options(query, dropout_p, is_causal, scale)
    )
    return out


def _scalar_options(query: torch.Tensor, dropout_p: float, is_causal: bool, scale: float | None) -> tuple:
    """(seed, dropout_p, is_causal, scale, allow_tf32) as the ops take them. The seed comes from torch's
    generator (so torch.manual_seed reproduces a run), as a tensor: no host sync."""
    if dropout_p > 0:
        seed = torch.randint(0, 2**31 - 1, (1,), device=query.device)
    else:
        seed = query.new_zeros(1, dtype=torch.int64)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    return seed, float(dropout_p), bool(is_causal), scale, torch.backends.cuda.matmul.allow_tf32


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """(..., H, L, E) -> (B, H, L, E) (a view where the batch dims allow); (L, E) -> (1, 1, L, E)."""
    if t.dim() == 2:
        return t[None, None]
    return t.reshape(-1, *t.shape[-3:])
