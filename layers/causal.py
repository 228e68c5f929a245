"""``CausalSelfAttention``: the attention block of PyTorch's SDPA tutorial (nanoGPT-style), on this package's kernels.

The tutorial builds ``CausalSelfAttention(num_heads=8, embed_dimension=512, bias=False, is_causal=True,
dropout=0.1)``; this class takes that constructor (by keyword, and by position in that order), its parameter names
(``c_attn``, ``c_proj``) so the tutorial module's ``state_dict`` loads, and nanoGPT's keyword names (``n_head``,
``n_embd``) too.

One deliberate difference: the tutorial's module switches causality off in evaluation (``is_causal`` only while
training), so a causal model sees the future at inference. Here ``is_causal`` holds in both modes; the numbers
equal the tutorial's in training (docs/decisions.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

import kernels

from ._dropout import packed_dropout
from ._scripted import ScriptedCausalSelfAttention
from .attention import packed_attention
from .config import ConfigMixin, check_dropout, check_heads, dtype_name
from .errors import ArgumentError
from .kv_cache import KVCache, cached_attention
from .nested import as_jagged, check_nested, like, wrap
from .scripting import TorchScriptable

__all__ = ["CausalSelfAttention"]


class CausalSelfAttention(TorchScriptable, ConfigMixin, nn.Module):
    """Self-attention with a fused q/k/v projection: the SDPA tutorial's block, on this package's attention.

    Args:
        num_heads: attention heads (nanoGPT: ``n_head``).
        embed_dimension: model width ``E``, a multiple of ``num_heads`` (nanoGPT: ``n_embd``).
        bias: biases in the projections (the tutorial's default: False).
        is_causal: top-left causal attention, in training **and** evaluation (the tutorial's default: False).
        dropout: on the attention weights and on the output (``resid_dropout``), in training only.
        device: of the parameters.
        dtype: of the parameters.

    Input ``(N, L, E)`` dense, or ``(N, j, E)`` nested of either layout -> the same shape and layout.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    attn = layers.CausalSelfAttention(num_heads=4, embed_dimension=32, is_causal=True)
    y = attn(torch.randn(2, 16, 32))  # (N, L, E)
    assert y.shape == (2, 16, 32)
    assert layers.CausalSelfAttention(4, 32).embed_dimension == 32  # the tutorial's positional order
    ```
    """

    _scripted_as = ScriptedCausalSelfAttention

    def __init__(
        self,
        num_heads: int | None = None,
        embed_dimension: int | None = None,
        bias: bool = False,
        is_causal: bool = False,
        dropout: float = 0.0,
        *,
        n_head: int | None = None,
        n_embd: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        num_heads = _one_of("num_heads", num_heads, "n_head", n_head)
        embed_dimension = _one_of("embed_dimension", embed_dimension, "n_embd", n_embd)
        if 0 < embed_dimension < num_heads and num_heads % embed_dimension == 0:
            raise ArgumentError(
                f"num_heads={num_heads} > embed_dimension={embed_dimension}: the arguments look swapped; the order "
                "is (num_heads, embed_dimension), as in the SDPA tutorial (or pass them by keyword)"
            )
        check_heads(embed_dimension, num_heads, names=("embed_dimension", "num_heads"))
        check_dropout(dropout)
        if not isinstance(is_causal, bool):
            raise ArgumentError(f"is_causal must be a bool, got {is_causal!r}")
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.c_attn = nn.Linear(embed_dimension, 3 * embed_dimension, bias=bias, **factory)  # q, k, v projections
        self.c_proj = nn.Linear(embed_dimension, embed_dimension, bias=bias, **factory)
        self.resid_dropout = nn.Dropout(dropout)
        self.num_heads, self.embed_dimension, self.dropout, self.is_causal = (
            num_heads,
            embed_dimension,
            dropout,
            is_causal,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "num_heads": self.num_heads,
            "embed_dimension": self.embed_dimension,
            "bias": self.c_attn.bias is not None,
            "is_causal": self.is_causal,
            "dropout": self.dropout,
            "dtype": dtype_name(self),
        }

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, embed_dimension={self.embed_dimension}, is_causal={self.is_causal}"

    def forward(self, x: torch.Tensor, *, kv_cache: KVCache | None = None) -> torch.Tensor:
        """``x (N, L, E)`` or nested ``(N, j, E)`` -> the same. With ``kv_cache`` (a `KVCache`), ``x`` holds the new
        tokens only: their keys/values are appended to the cache and they attend over everything cached (bottom-right
        causal); a nested ``x`` adds a different number of tokens to each sequence (prompts of different lengths)."""
        if kv_cache is not None:
            return self._forward_cached(x, kv_cache)
        dropout_p = self.dropout if self.training else 0.0
        if x.is_nested:
            check_nested("x", x, self.embed_dimension, batch_first=True)
            jagged = as_jagged(x)
            q, k, v = self.c_attn(jagged.values()).chunk(3, dim=-1)  # (T, E) each
            offsets = jagged.offsets()
            y = packed_attention(q, k, v, offsets, offsets, self.num_heads, dropout_p, self.is_causal)
            return like(wrap(packed_dropout(self.resid_dropout, self.c_proj(y)), offsets), x)
        if x.dim() != 3 or x.size(-1) != self.embed_dimension:
            raise ArgumentError(
                f"expected input (N, L, {self.embed_dimension}) or a nested (N, j, {self.embed_dimension}), "
                f"got shape {tuple(x.shape)}"
            )
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in self.c_attn(x).chunk(3, dim=-1))
        y = kernels.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.is_causal)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(-2)))  # (N, L, E)

    def _forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if not self.is_causal:
            raise ArgumentError("kv_cache needs is_causal=True: decoding attends to the past only")
        if self.training and self.dropout > 0:
            raise ArgumentError("kv_cache is for inference: call .eval() (attention dropout is not applied to caches)")
        if x.is_nested:
            check_nested("x", x, self.embed_dimension, batch_first=True)
            jagged = as_jagged(x)
            q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in self.c_attn(jagged.values()).chunk(3, dim=-1))
            y = cached_attention(q, k, v, cache, jagged.offsets())  # (T, H, D)
            return like(wrap(self.resid_dropout(self.c_proj(y.flatten(-2))), jagged.offsets()), x)
        if x.dim() != 3 or x.size(-1) != self.embed_dimension:
            raise ArgumentError(f"expected new tokens (N, T, {self.embed_dimension}), got shape {tuple(x.shape)}")
        q, k, v = self.c_attn(x).unflatten(-1, (3, self.num_heads, -1)).unbind(2)  # (N, T, H, D) each
        # no resid_dropout: caches are for inference (checked above), where it is the identity; a decoding step is
        # a few dozen small operations, each skipped one is a measurable share of it
        return self.c_proj(cached_attention(q, k, v, cache).flatten(-2))


def _one_of(name: str, value: int | None, alias: str, alias_value: int | None) -> int:
    if value is not None and alias_value is not None and value != alias_value:
        raise ArgumentError(f"{name}={value} and {alias}={alias_value} disagree; pass one of them")
    chosen = value if value is not None else alias_value
    if chosen is None:
        raise ArgumentError(f"CausalSelfAttention needs {name} (or nanoGPT's {alias})")
    return chosen
