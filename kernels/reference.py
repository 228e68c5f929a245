"""The explicit reference attention (``Backend.MATH``): the oracle of every test.

For one head, with query rows q_i, keys k_j, values v_j and scale s::

    z_ij = s * (q_i . k_j) + b_ij
    p_ij = a_ij * exp(z_ij - m_i) / sum_l a_il * exp(z_il - m_i)
    o_i  = sum_j d_ij / (1 - p_drop) * p_ij * v_j

a_ij in {0, 1} says whether row i may attend to column j (bool mask, causal), b_ij is an additive float
mask, m_i the row maximum and d_ij the dropout keep mask. A row whose denominator is 0 (nothing to attend
to) gives o_i = 0: the maximum is guarded and the denominator replaced by 1, so neither the output nor any
gradient is NaN.

Everything is plain torch in the input dtype, so float64 inputs give a float64 oracle.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention_probs", "attention_reference", "dropout_keep_mask"]


def dropout_keep_mask(
    shape: tuple[int, ...], dropout_p: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A bool keep mask of ``shape`` where each entry is kept with probability ``1 - dropout_p``."""
    return torch.rand(shape, device=device, generator=generator) >= dropout_p


def attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention written out step by step (dense tensors).

    Shapes: ``query (..., Hq, L, E)``, ``key (..., Hk, S, E)``, ``value (..., Hk, S, Ev)`` ->
    ``(..., Hq, L, Ev)``; ``attn_mask`` broadcastable to ``(..., Hq, L, S)``, bool (True = may attend)
    or float (added to the scores). The arguments are those of
    ``torch.nn.functional.scaled_dot_product_attention`` (``is_causal`` top-left aligned), plus one:

    Args:
        dropout_mask: optional bool keep mask broadcastable to ``(..., Hq, L, S)``. Given, it replaces the
            random draw (so a kernel's dropout can be checked against this function with the same mask);
            it is used only when ``dropout_p > 0``.

    Example, run by the test suite:

    ```python
    import torch
    from kernels.reference import attention_reference

    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.float64) for _ in range(3))
    out = attention_reference(q, k, v, is_causal=True)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected)
    ```
    """
    probs = attention_probs(query, key, attn_mask, is_causal, scale, enable_gqa)  # (..., H, L, S)
    if dropout_p > 0.0:
        if dropout_mask is None:
            dropout_mask = dropout_keep_mask(tuple(probs.shape), dropout_p, probs.device)
        probs = probs * dropout_mask / (1.0 - dropout_p)
    return probs @ repeat_kv(value, query, enable_gqa)  # (..., H, L, Ev)


def repeat_kv(t: torch.Tensor, query: torch.Tensor, enable_gqa: bool) -> torch.Tensor:
    """Key/value heads repeated to the query's head count (grouped-query attention)."""
    if enable_gqa and query.dim() >= 3 and t.size(-3) != query.size(-3):
        return t.repeat_interleave(query.size(-3) // t.size(-3), dim=-3)
    return t


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """The attention weights ``softmax(q k^T * scale + mask)``, ``(..., H, L, S)``, before dropout.

    A row with nothing to attend to is all zeros (guarded softmax, no NaN in values or gradients).
    """
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    key = repeat_kv(key, query, enable_gqa)
    scores = (query @ key.transpose(-2, -1)) * scale  # (..., H, L, S)
    allowed = None
    if is_causal:
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask
        else:
            scores = scores + attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))

    # Guarded softmax: a row of -inf keeps max 0 and denominator 1, so it yields 0 with 0 gradients.
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(denom == 0, torch.ones_like(denom), denom)
