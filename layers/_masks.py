"""torch.nn mask conventions, checked and turned into the form `kernels.scaled_dot_product_attention` takes.

``nn.MultiheadAttention`` masks say where **not** to attend (bool True = masked out; float = added to the
scores); F.sdpa's bool masks say where attention **may** go. Everything crossing that line goes through
`merge_masks`. Masks stay bool where they are bool (no float tensor is built for them), a mask that masks nothing
is dropped (`drop_noop`), and a key padding mask that only marks padding (bool, or float of 0 and -inf) lets the
layers skip the padding (`padding_keep`).
"""

from __future__ import annotations

import torch

from .errors import ArgumentError, ArgumentTypeError, RuntimeArgumentError


def tracing() -> bool:
    """Whether torch.compile / torch.export / TorchScript is tracing: no host reads of tensor values then."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def check_mask_dtype(mask: torch.Tensor | None, name: str) -> None:
    """torch accepts bool and floating masks and asserts otherwise; so do we, saying how to convert."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise ArgumentTypeError(
            f"only bool and floating types of {name} are supported (as in torch.nn), got {mask.dtype}; "
            f"for a mask of 0/1 where 1 = masked out, pass {name}.bool()"
        )


def check_attn_mask_shape(attn_mask: torch.Tensor, batch: int, heads: int, q_len: int, k_len: int) -> None:
    shape = tuple(attn_mask.shape)
    if shape in ((q_len, k_len), (batch * heads, q_len, k_len), (1, q_len, k_len)):
        return
    raise RuntimeArgumentError(
        f"attn_mask must have shape (L, S) = {(q_len, k_len)} or (N * num_heads, L, S) = "
        f"{(batch * heads, q_len, k_len)}, got {shape}"
    )


def check_key_padding_mask_shape(mask: torch.Tensor, batch: int, k_len: int, batched: bool) -> None:
    expected = (batch, k_len) if batched else (k_len,)
    if tuple(mask.shape) != expected:
        layout = "(N, S)" if batched else "(S,) for unbatched input"
        raise ArgumentError(f"key_padding_mask must have shape {layout} = {expected}, got {tuple(mask.shape)}")


def drop_noop(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``None`` for a mask that masks nothing (bool all False, float all 0), so it costs nothing downstream.

    The check reads the mask (one pass, and a host read): done on CPU only, and never while tracing; on a GPU
    the synchronisation would cost more than the mask saves.
    """
    if mask is None or mask.device.type != "cpu" or tracing():
        return mask
    return None if not mask.any() else mask


def padding_keep(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The real tokens ``(N, S)`` (True = real) of a key padding mask that only marks padding: bool, or float whose
    entries are all 0 (real) or -inf (padding). ``None`` for any other mask (a float bias must be added)."""
    if key_padding_mask is None:
        return None
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    padding = torch.isneginf(key_padding_mask)
    if tracing() or not bool((padding | (key_padding_mask == 0)).all()):
        return None
    return ~padding


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One F.sdpa mask broadcastable to ``(N, H, L, S)`` from nn-convention masks.

    ``attn_mask``: ``(L, S)``, ``(1, L, S)`` or ``(N * H, L, S)``; ``key_padding_mask``: ``(N, S)``.
    All-bool inputs give a bool "may attend" mask (no float tensor is materialised); otherwise the masks are
    summed as additive floats of ``dtype``, as torch does.
    """
    masks = []
    if attn_mask is not None:
        if attn_mask.dim() == 3:  # (N * H, L, S) or (1, L, S)
            attn_mask = attn_mask.unflatten(0, (batch, heads)) if attn_mask.size(0) != 1 else attn_mask[None]
        masks.append(attn_mask)
    if key_padding_mask is not None:
        masks.append(key_padding_mask[:, None, None, :])  # (N, 1, 1, S)
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        keep = ~masks[0]
        for m in masks[1:]:
            keep = keep & ~m
        return keep
    total = _additive(masks[0], dtype)
    for m in masks[1:]:
        total = total + _additive(m, dtype)
    return total


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """The nn-convention (True = masked out) top-left causal mask ``(L, S)``."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(1)


def is_causal_mask(mask: torch.Tensor | None, size: int) -> bool:
    """Whether ``mask`` is the square causal mask, bool or float (``-inf`` above the diagonal).

    What ``nn.TransformerEncoder`` does when ``is_causal`` is None: compare with the mask that
    ``nn.Transformer.generate_square_subsequent_mask`` makes (one comparison; a host read, skipped while tracing).
    """
    if mask is None or tuple(mask.shape) != (size, size) or tracing():
        return False
    upper = causal_mask(size, size, mask.device)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, upper))
    expected = torch.zeros(size, size, dtype=mask.dtype, device=mask.device).masked_fill_(upper, float("-inf"))
    return bool(torch.equal(mask, expected))
