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

# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner on a GPU, in a module-level list so
# the offline compile check covers exactly them; `_prune` drops what cannot fit large head dims.
CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1)]
INTERPRETER_CONFIG = (32, 32, 4, 1)  # one config: the interpreter cannot benchmark (TRITON-NOTES.md)


def _tiles(head_dim: int) -> tuple[int, int, int, int]:
    """The tile for a head dim. Larger head dims need smaller tiles to fit shared memory and registers."""
    if INTERPRET:
        return INTERPRETER_CONFIG
    if head_dim <= 64:
        return CONFIGS[0]
    if head_dim <= 128:
        return CONFIGS[2]
    return CONFIGS[4]


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
    B, H, L, D = q.shape
    S, DV = k.size(2), v.size(3)
    out = q.new_empty(B, H, L, DV)
    lse = torch.empty(B * H, L, device=q.device, dtype=torch.float32)
    mask_t, mask_strides, mask_kind = _mask_args(mask, q, S)
    block_m, block_n, warps, stages = _tiles(max(D, DV))
    grid = (triton.cdiv(L, block_m), B * H)
    attn_fwd[grid](
        q, k, v, mask_t, out, lse, seed, *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
        H, H // k.size(1), L, S, D, DV, scale, dropout_p,
        IS_CAUSAL=is_causal, MASK_KIND=mask_kind, HAS_DROPOUT=dropout_p > 0, ALLOW_TF32=allow_tf32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block(D), BLOCK_DV=_block(DV), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out, lse


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
    B, H, L, D = q.shape
    Hk, S, DV = k.size(1), k.size(2), v.size(3)
    mask_t, mask_strides, mask_kind = _mask_args(mask, q, S)
    block_m, block_n, warps, stages = _tiles(max(D, DV))
    consts = {
        "IS_CAUSAL": is_causal, "MASK_KIND": mask_kind, "HAS_DROPOUT": dropout_p > 0, "ALLOW_TF32": allow_tf32,
        "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": _block(D), "BLOCK_DV": _block(DV),
        "num_warps": warps, "num_stages": stages,
    }  # fmt: skip
    delta = torch.empty(B * H, L, device=q.device, dtype=torch.float32)
    attn_bwd_preprocess[(triton.cdiv(L, block_m), B * H)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, L, DV, BLOCK_M=block_m, BLOCK_DV=_block(DV)
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (*q.stride(), *k.stride(), *v.stride(), *mask_strides, *grad_out.stride())
    sizes = (H, H // Hk, L, S, D, DV, scale, dropout_p)
    attn_bwd_dkdv[(triton.cdiv(S, block_n), B * Hk)](
        q, k, v, mask_t, grad_out, lse, delta, dk, dv, seed, *common, *dk.stride(), *dv.stride(), *sizes, **consts
    )
    attn_bwd_dq[(triton.cdiv(L, block_m), B * H)](
        q, k, v, mask_t, grad_out, lse, delta, dq, seed, *common, *dq.stride(), *sizes, **consts
    )
    return dq, dk, dv


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
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    # The seed comes from torch's generator (so torch.manual_seed reproduces a run), as a tensor: no host sync.
    seed = (
        torch.randint(0, 2**31 - 1, (1,), device=query.device)
        if dropout_p > 0
        else query.new_zeros(1, dtype=torch.int64)
    )
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    out, _ = flash_attention_fwd(q, k, v, mask, seed, float(dropout_p), bool(is_causal), scale, allow_tf32)
    return out.reshape(*query.shape[:-1], value.size(-1))


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """(..., H, L, E) -> (B, H, L, E) (a view where the batch dims allow); (L, E) -> (1, 1, L, E)."""
    if t.dim() == 2:
        return t[None, None]
    return t.reshape(-1, *t.shape[-3:])
