"""``kernels.dropout``: dropout whose masks cost a fraction of torch's on CPU, for tokens that cannot follow torch's
random stream anyway (packed sequences: their elements are not where a padded batch has them).

On CPU torch draws a dropout mask with ``bernoulli_``, one generator call per element: ~7 ns an element here, about
a quarter of a padded decoder training step (profiled once on `layers.bench`'s ``train-decoder``; ~29% of torch's
dense step). One call of the same
generator fills 64 bits, so `keep_mask` draws 64-bit integers and reads them as four 16-bit numbers each: an
element is kept where its number is at least ``p`` of the way up, i.e. with probability ``1 - p'``, ``p'`` being
``p`` rounded to a multiple of 2^-16 (within 7.7e-6 of it), and the kept elements are scaled by ``1 / (1 - p')``, so
the expectation is exactly the input's. The numbers come from torch's default generator: ``torch.manual_seed``
makes them reproducible, but they are not the ones ``torch.nn.Dropout`` would draw. On CUDA (torch's fused kernel
is fast) and while ``torch.compile`` traces (inductor draws its own numbers) torch's dropout runs instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import repeat_kv

__all__ = ["dropout", "dropout_attention", "keep_mask"]

_LEVELS = 1 << 16  # 16-bit numbers


def _quantized(p: float) -> int:
    """How many of the 2^16 levels are dropped: ``p`` rounded to a multiple of 2^-16."""
    return round(p * _LEVELS)


def fast_path(p: float, device: torch.device) -> bool:
    """Whether `dropout` draws its own mask for ``p`` on ``device`` (else it calls torch's)."""
    return device.type == "cpu" and 0 < _quantized(p) < _LEVELS and not torch.compiler.is_compiling()


def keep_mask(
    shape: tuple[int, ...], p: float, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """A bool mask of ``shape``, each element True (kept) with probability ``1 - p'``, and the scale
    ``1 / (1 - p')`` of the kept elements; ``p'`` is ``p`` rounded to a multiple of 2^-16 (see the module).

    Example, run by the test suite:

    ```python
    import torch
    from kernels.dropout_masks import keep_mask

    keep, scale = keep_mask((1000, 100), 0.1)
    assert keep.dtype == torch.bool and abs(keep.float().mean().item() - 0.9) < 0.01
    assert abs(scale - 1 / 0.9) < 1e-4
    ```
    """
    dropped = _quantized(p)
    if not 0 <= dropped < _LEVELS:
        raise ValueError(f"keep_mask: p must be in [0, 1), got {p!r}")
    n = math.prod(shape)
    # random_ over the whole int64 range: all 64 bits random (its default range leaves the sign bit 0)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1, generator=generator)
    numbers = words.view(torch.int16)[:n].view(shape)  # uniform over [-2^15, 2^15)
    return numbers >= dropped - _LEVELS // 2, _LEVELS / (_LEVELS - dropped)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """``F.dropout(input, p, training)`` with the mask of `keep_mask` on CPU (see the module); the same shapes.

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    x = torch.randn(64, 256, requires_grad=True)  # (any shape)
    y = kernels.dropout(x, 0.1)  # the same shape: ~10% zeros, the rest scaled by 1 / (1 - p')
    kept = y != 0
    torch.testing.assert_close((y[kept] / x[kept]).mean(), torch.tensor(1 / 0.9), rtol=1e-4, atol=0)
    y.sum().backward()  # the gradient goes through the same mask
    assert torch.equal(x.grad != 0, kept)
    ```
    """
    if not training or p == 0:
        return input
    if input.is_nested or not input.is_floating_point() or not fast_path(p, input.device):
        return F.dropout(input, p, training)  # (an integer input: torch's error)
    keep, scale = keep_mask(tuple(input.shape), p, input.device)
    return input * (keep * input.new_tensor(scale))  # in the input's dtype; backward: one product with it


def dropout_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Attention with dropout on the weights from `keep_mask`'s masks: the steps torch's CPU math path takes for
    dropout (its fused CPU kernel has none), with the mask drawn as `dropout` draws it. Arguments and shapes as
    `scaled_dot_product_attention` (dense; bool masks True = may attend, float masks added); a row with nothing to
    attend to gives 0, with zero gradients.
    """
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    key, value = repeat_kv(key, query, enable_gqa), repeat_kv(value, query, enable_gqa)
    scores = (query * scale) @ key.transpose(-2, -1)  # (..., H, L, S); scaling the queries is the smaller product
    allowed = None
    if is_causal:
        allowed = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    elif attn_mask is not None:  # its -inf entries as a bool mask (a row of them becomes an empty row)
        finite = ~torch.isneginf(attn_mask)
        scores = scores + attn_mask.masked_fill(~finite, 0.0)
        allowed = finite if allowed is None else allowed & finite
    empty = None
    if allowed is not None:
        empty = ~allowed.any(dim=-1, keepdim=True)  # (..., L, 1): such rows see every key, then give 0
        scores = scores.masked_fill(~(allowed | empty), float("-inf"))
    probs = scores.softmax(dim=-1)
    keep, keep_scale = keep_mask(tuple(probs.shape), dropout_p, probs.device)
    out = (probs * (keep * probs.new_tensor(keep_scale))) @ value
    return out if empty is None else out.masked_fill(empty, 0.0)
