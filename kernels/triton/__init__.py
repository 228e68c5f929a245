"""``Backend.TRITON``: when the repository's fused Triton kernels can serve a call, and the call itself.

``triton`` is imported only inside ``kernels/`` and only when present (lazily, at the first call), so the
package imports on machines without it (macOS, Windows) and every layer runs on ``Backend.TORCH`` there.
"""

from __future__ import annotations

import importlib.util
import os

import torch

# Read once: the Triton interpreter is chosen when @triton.jit decorates, i.e. at import time.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
# Dropout's Philox offset within one (batch, head) is ``row * S + column`` in 32-bit arithmetic (the kernels'
# hot loops): past this many query-key pairs per head it would wrap and masks would repeat. 64-bit offsets made a
# dK/dV variant spill under triton 3.6, so such calls go to another backend instead.
MAX_DROPOUT_PAIRS = 2**31


def unavailable_reasons(
    query: torch.Tensor,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    varlen: bool = False,
    decode_grad: bool = False,
    dropout_p: float = 0.0,
    longest: tuple[int, int] | None = None,
) -> list[str]:
    """Why the fused kernels cannot serve these inputs (empty when they can). ``longest``: the longest query and key
    sequence of a variable-length call, where known (the lengths were read)."""
    reasons = []
    ragged = varlen or query.is_nested
    sizes = longest if ragged else None if key is None else (query.size(-2), key.size(-2))
    if dropout_p > 0 and sizes is not None and sizes[0] * sizes[1] >= MAX_DROPOUT_PAIRS:
        reasons.append(
            f"dropout over L x S = {sizes[0]} x {sizes[1]} query-key pairs per head"
            f"{' (the longest sequences)' if ragged else ''}, >= 2^31 (the kernels' dropout offsets within a head "
            "are 32-bit)"
        )
    if decode_grad:
        reasons.append("decode attention of inputs that require grad (the decode kernel computes no gradients)")
    if not TRITON_INSTALLED:
        reasons.append("triton is not installed (it has wheels for Linux only)")
    if query.device.type == "cpu" and not INTERPRETER:
        reasons.append("CPU tensor and no Triton interpreter (set TRITON_INTERPRET=1 before importing kernels)")
    elif query.device.type not in ("cpu", "cuda"):
        reasons.append(f"tensors on {query.device.type}; the kernels run on CUDA")
    if query.dtype not in DTYPES:
        reasons.append(f"dtype {query.dtype}; the kernels take float16, bfloat16 and float32")
    elif query.dtype == torch.bfloat16 and INTERPRETER:
        reasons.append("bfloat16 under the Triton interpreter, which computes it wrongly (triton issue #11584)")
    head_dims = [t.size(-1) for t in (query, value) if t is not None]
    if max(head_dims) > MAX_HEAD_DIM:
        reasons.append(f"head dim {max(head_dims)} > {MAX_HEAD_DIM}")
    elif max(head_dims) > 128 and query.dtype == torch.float32:
        reasons.append("float32 with a head dim above 128 (the backward kernel spills registers there)")
    if isinstance(attn_mask, torch.Tensor) and attn_mask.dtype != torch.bool and attn_mask.requires_grad:
        reasons.append("a float attn_mask that requires grad (the kernels do not compute its gradient)")
    return reasons


def attention(*args, **kwargs) -> torch.Tensor:
    """F.sdpa's contract on the fused kernels; see `kernels.triton.ops.flash_attention`."""
    from .ops import flash_attention  # imports triton: only when the backend is used

    return flash_attention(*args, **kwargs)


def varlen_attention(*args, **kwargs) -> torch.Tensor:
    """Packed sequences on the fused kernels, one launch; see `kernels.triton.ops.flash_attention_varlen`."""
    from .ops import flash_attention_varlen

    return flash_attention_varlen(*args, **kwargs)


def decode_attention(query, key_cache, value_cache, lengths, scale: float) -> torch.Tensor:
    """The split-key decode kernel; see `kernels.decode_attention`."""
    from .ops import decode_attention as fused_decode

    return fused_decode(query, key_cache, value_cache, lengths, scale, torch.backends.cuda.matmul.allow_tf32)
