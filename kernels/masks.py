"""Masks given by their shape rather than a tensor: causal masks of either alignment and sliding windows.

Query row ``i`` may attend to key column ``j`` when

    i - left <= j - shift <= i + right,        shift = S - L (bottom-right aligned) or 0 (top-left aligned)

with ``left``/``right`` ``None`` for an unbounded side. Top-left causal (``is_causal=True``, torch's
``causal_upper_left``) is ``right = 0``; torch's ``causal_lower_right`` is the same bottom-right aligned (the last
query sees every key: what a query appended to a key/value cache needs); a sliding window of ``w`` keys is
``left = w - 1``.

The fused kernels apply a band without any mask tensor and visit only the key blocks inside it; ``Backend.TORCH``
computes windows chunk by chunk (`kernels.window.windowed_attention`), so a window costs ``L x window``, not
``L x S``; ``Backend.MATH`` materialises the mask.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch

__all__ = ["Band", "band_of", "sliding_window"]


@dataclasses.dataclass(frozen=True)
class Band:
    """A band mask (see the module). ``L``/``S`` are the sizes it was made for (``None``: any, as for variable
    length, where the band applies to each sequence with its own lengths)."""

    L: int | None
    S: int | None
    left: int | None
    right: int | None
    lower_right: bool = False

    def shift(self, L: int, S: int) -> int:
        return S - L if self.lower_right else 0

    def materialize(self, L: int | None = None, S: int | None = None, device=None) -> torch.Tensor:
        """The ``(L, S)`` bool mask, True = may attend (the F.sdpa convention)."""
        L = self.L if L is None else L
        S = self.S if S is None else S
        if L is None or S is None:
            raise ValueError("this band was made for any length: pass L and S to materialize it")
        rel = torch.arange(S, device=device)[None, :] - torch.arange(L, device=device)[:, None] - self.shift(L, S)
        allowed = torch.ones(L, S, dtype=torch.bool, device=device)
        if self.right is not None:
            allowed &= rel <= self.right
        if self.left is not None:
            allowed &= rel >= -self.left
        return allowed

    def window(self) -> tuple[int, int]:
        """``(left, right)`` as the kernels take them, ``-1`` = unbounded."""
        return (-1 if self.left is None else self.left, -1 if self.right is None else self.right)

    def is_causal_upper_left(self) -> bool:
        return self.left is None and self.right == 0 and not self.lower_right

    def describe(self) -> str:
        if self.left is None and self.right == 0:
            return f"causal, {'bottom-right' if self.lower_right else 'top-left'} aligned"
        sides = []
        if self.left is not None:
            sides.append(f"{self.left} keys before")
        if self.right is not None:
            sides.append(f"{self.right} after")
        aligned = "bottom-right" if self.lower_right else "top-left"
        return f"sliding window ({', '.join(sides) or 'unbounded'}; {aligned} aligned)"


def sliding_window(
    L: int | None, S: int | None, left: int | None, right: int | None = 0, lower_right: bool = False
) -> Band:
    """A sliding-window mask for `kernels.scaled_dot_product_attention` and `kernels.varlen_attention`.

    Args:
        L: query length (``None``: any length, e.g. for variable-length batches, per sequence).
        S: key length (``None``: any length).
        left: keys before the diagonal a query may see (``None``: all of them). A window of ``w`` keys ending at
            the query itself is ``left = w - 1``.
        right: keys after the diagonal (``0``: causal; ``None``: all of them).
        lower_right: align the diagonal to the bottom-right corner (``S - L``), as for queries appended to a cache.

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    q = k = v = torch.randn(1, 2, 6, 8)  # (B, H, L, E)
    window = kernels.sliding_window(6, 6, left=2)  # each query sees itself and the two keys before it
    out = kernels.scaled_dot_product_attention(q, k, v, attn_mask=window)
    dense = kernels.scaled_dot_product_attention(q, k, v, attn_mask=window.materialize())
    torch.testing.assert_close(out, dense)
    ```
    """
    for name, value in (("L", L), ("S", S), ("left", left), ("right", right)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
            raise ValueError(f"sliding_window: {name} must be a non-negative int or None, got {value!r}")
    if left is None and right is None:
        raise ValueError("sliding_window: left and right are both None (no band); pass attn_mask=None instead")
    return Band(L, S, left, right, bool(lower_right))


def band_of(attn_mask: object) -> Band | None:
    """The band of a `Band` or of torch's ``CausalBias`` (``causal_upper_left``/``causal_lower_right``); None for
    anything else."""
    if attn_mask is None or type(attn_mask) is torch.Tensor:  # the common calls (CausalBias subclasses Tensor)
        return None
    if isinstance(attn_mask, Band):
        return attn_mask
    try:
        from torch.nn.attention.bias import CausalBias, CausalVariant
    except ImportError:  # an older torch
        return None
    if isinstance(attn_mask, CausalBias):
        lower = attn_mask.variant == CausalVariant.LOWER_RIGHT
        return Band(attn_mask.seq_len_q, attn_mask.seq_len_kv, None, 0, lower)
    return None
