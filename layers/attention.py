"""Attention modules: a drop-in ``nn.MultiheadAttention`` and the nanoGPT-style ``CausalSelfAttention``.

``MultiheadAttention`` subclasses ``torch.nn.MultiheadAttention``: the constructor, the parameters and
their names, the initialisation (same random draws for the same seed) and ``isinstance`` checks are
torch's own; the forward pass is this package's, through `kernels.scaled_dot_product_attention`.

Shape legend: ``N`` batch, ``L`` target length, ``S`` source length, ``E`` embed dim, ``H`` heads,
``D = E / H`` head dim, ``T`` total tokens of a packed (jagged) batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

from ._masks import (
    causal_mask,
    check_attn_mask_shape,
    check_key_padding_mask_shape,
    check_mask_dtype,
    merge_masks,
)
from .config import ConfigMixin, check_dropout, check_heads, check_positive_int, dtype_name

__all__ = ["CausalSelfAttention", "MultiheadAttention"]


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    heads: int,
    dropout_p: float,
    is_causal: bool,
) -> torch.Tensor:
    """Attention over packed sequences: ``q (Tq, E)``, ``k``/``v (Tk, E)`` -> ``(Tq, E)``."""
    q, k, v = (t.unflatten(-1, (heads, -1)) for t in (q, k, v))  # (T, H, D) views
    out = kernels.varlen_attention(q, k, v, q_offsets, k_offsets, dropout_p=dropout_p, is_causal=is_causal)
    return out.flatten(-2)  # (Tq, E)


class MultiheadAttention(ConfigMixin, nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` on this package's fused attention.

    Same constructor, parameters, ``state_dict`` keys, initialisation, forward arguments and return values
    as ``torch.nn.MultiheadAttention``; see its documentation. Masks follow the ``nn`` convention:
    **bool True = masked out** (the opposite of F.sdpa), float = added to the scores.

    What differs:

    - Jagged nested inputs ``(N, j, E)`` (``batch_first=True``, ``need_weights=False``) work in training and
      evaluation, with gradients; query and key/value may have different lengths per sequence.
    - ``is_causal=True`` works without an ``attn_mask`` (torch requires one as a hint).
    - A query row that may attend to nothing returns 0 (torch returns NaN).
    - ``need_weights=True`` (torch's default) runs the explicit path that materialises the weights: pass
      ``need_weights=False`` for speed.

    Shapes (``batch_first=True``): query ``(N, L, E)``, key ``(N, S, kdim)``, value ``(N, S, vdim)`` ->
    output ``(N, L, E)`` and weights ``(N, L, S)`` (``(N, H, L, S)`` with ``average_attn_weights=False``).
    Unbatched inputs drop ``N``; ``batch_first=False`` swaps ``N`` and ``L``/``S``.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    mha = layers.MultiheadAttention(64, 8, batch_first=True)
    x = torch.randn(2, 10, 64)  # (N, L, E)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True  # True = padding
    out, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)
    assert out.shape == (2, 10, 64)

    ref = torch.nn.MultiheadAttention(64, 8, batch_first=True)
    ref.load_state_dict(mha.state_dict())  # the same parameters, both ways
    expected, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    ```
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        check_heads(embed_dim, num_heads)
        check_dropout(dropout)
        for name, dim in (("kdim", kdim), ("vdim", vdim)):
            if dim is not None:
                check_positive_int(dim, name)
        super().__init__(
            embed_dim,
            num_heads,
            dropout,
            bias,
            add_bias_kv,
            add_zero_attn,
            kdim,
            vdim,
            batch_first,
            device,
            dtype,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "bias": self.in_proj_bias is not None,
            "add_bias_kv": self.bias_k is not None,
            "add_zero_attn": self.add_zero_attn,
            "kdim": self.kdim,
            "vdim": self.vdim,
            "batch_first": self.batch_first,
            "dtype": dtype_name(self),
        }

    def extra_repr(self) -> str:
        cfg = self.get_config()
        defaults = {
            "dropout": 0.0,
            "bias": True,
            "add_bias_kv": False,
            "add_zero_attn": False,
            "batch_first": False,
        }
        shown = [f"{cfg['embed_dim']}, num_heads={cfg['num_heads']}"]
        shown += [f"{k}={v}" for k, v in cfg.items() if k in defaults and v != defaults[k]]
        if not self._qkv_same_embed_dim:
            shown.append(f"kdim={self.kdim}, vdim={self.vdim}")
        return ", ".join(shown)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """The input projections; one matmul when query, key and value are the same tensor."""
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        if self._qkv_same_embed_dim:
            if query is key and key is value:
                return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``torch.nn.MultiheadAttention.forward``; also takes jagged nested tensors (see the class)."""
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal), None
        return self._forward_dense(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )

    def _check_dense(self, query, key, value) -> bool:
        """Checks shapes; returns whether the input is batched."""
        if query.dim() not in (2, 3):
            raise ValueError(
                f"query must be (L, E) unbatched or {'(N, L, E)' if self.batch_first else '(L, N, E)'} batched "
                f"(batch_first={self.batch_first}), got shape {tuple(query.shape)}"
            )
        for name, t, dim in (("key", key, self.kdim), ("value", value, self.vdim)):
            if t.dim() != query.dim():
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but query has {tuple(query.shape)}: both batched "
                    "(3 dims) or both unbatched (2 dims)"
                )
            if t.size(-1) != dim:
                raise ValueError(f"{name} must have {dim} features (the last dim), got shape {tuple(t.shape)}")
        if query.size(-1) != self.embed_dim:
            raise ValueError(
                f"query must have embed_dim={self.embed_dim} features (the last dim), got shape {tuple(query.shape)}"
            )
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must agree but in the last dim")
        return query.dim() == 3

    def _forward_dense(
        self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
    ):
        batched = self._check_dense(query, key, value)
        check_mask_dtype(key_padding_mask, "key_padding_mask")
        check_mask_dtype(attn_mask, "attn_mask")
        # Work in (N, L, E); transposing views keeps `query is key` identity for the fused projection.
        same_kv, same_qk = key is value, query is key
        if not batched:
            query = query.unsqueeze(0)
        elif not self.batch_first:
            query = query.transpose(0, 1)
        key = (
            query
            if same_qk
            else (key.unsqueeze(0) if not batched else key if self.batch_first else key.transpose(0, 1))
        )
        value = (
            key
            if same_kv
            else (value.unsqueeze(0) if not batched else value if self.batch_first else value.transpose(0, 1))
        )
        if query.size(0) != key.size(0):
            raise ValueError(f"query holds {query.size(0)} sequences but key holds {key.size(0)}")
        N, L, E = query.shape
        S, H = key.size(1), self.num_heads
        if key_padding_mask is not None:
            check_key_padding_mask_shape(key_padding_mask, N, S, batched)
            key_padding_mask = key_padding_mask.view(N, S)
        if attn_mask is not None:
            check_attn_mask_shape(attn_mask, N, H, L, S)

        # torch's rule: the is_causal hint replaces attn_mask unless key padding or weights need a mask.
        use_causal_flag = False
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask, use_causal_flag = None, True
        elif is_causal and attn_mask is None:  # torch raises here; the mask is what the hint means
            attn_mask = causal_mask(L, S, query.device)

        q, k, v = self._project(query, key, value)  # (N, L, E), (N, S, E), (N, S, E)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        q, k, v = (t.unflatten(-1, (H, -1)).transpose(1, 2) for t in (q, k, v))  # (N, H, *, D)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, H, 1, k.size(-1))], dim=2)
            v = torch.cat([v, v.new_zeros(N, H, 1, v.size(-1))], dim=2)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)

        mask = merge_masks(attn_mask, key_padding_mask, N, H, q.dtype)  # broadcastable to (N, H, L, S)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = kernels.attention_with_weights(q, k, v, mask, dropout_p, use_causal_flag)
        else:
            out = kernels.scaled_dot_product_attention(q, k, v, mask, dropout_p, use_causal_flag)
        out = self.out_proj(out.transpose(1, 2).flatten(-2))  # (N, L, E)

        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights  # (N, L, S) or (N, H, L, S)
            weights = weights if batched else weights.squeeze(0)
        return out, weights

    def _forward_nested(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
        if not self.batch_first:
            raise ValueError(
                "nested inputs need batch_first=True: a jagged nested tensor is (N, j, E); "
                "construct the layer with batch_first=True"
            )
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not t.is_nested or t.layout != torch.jagged or t.dim() != 3:
                raise ValueError(
                    f"{name} must be a jagged nested tensor (N, j, E) like the other inputs, got "
                    f"{'a nested tensor of layout ' + str(t.layout) if t.is_nested else 'a dense tensor'} "
                    f"of shape {tuple(t.shape)}"
                )
        if need_weights:
            raise ValueError("need_weights=True is not supported with nested inputs; pass need_weights=False")
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError(
                "nested inputs take no key_padding_mask or attn_mask (a nested batch has no padding); "
                "use is_causal=True for causal attention"
            )
        if self.bias_k is not None or self.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported with nested inputs")
        same_qk, same_kv = query is key, key is value
        q_vals = query.values()  # (Tq, E)
        k_vals = q_vals if same_qk else key.values()
        v_vals = k_vals if same_kv else value.values()
        q, k, v = self._project(q_vals, k_vals, v_vals)
        out = self.packed_forward(q, k, v, query.offsets(), key.offsets(), is_causal)
        return torch.nested.nested_tensor_from_jagged(out, offsets=query.offsets())

    def packed_forward(self, q, k, v, q_offsets, k_offsets, is_causal: bool) -> torch.Tensor:
        """Attention and output projection on projected, packed tokens: ``(Tq, E)`` -> ``(Tq, E)``."""
        dropout_p = self.dropout if self.training else 0.0
        return self.out_proj(packed_attention(q, k, v, q_offsets, k_offsets, self.num_heads, dropout_p, is_causal))

    def packed_self_attention(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """Self-attention over packed sequences ``x (T, E)`` with ``offsets (N + 1,)`` -> ``(T, E)``."""
        if self.bias_k is not None or self.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported on packed (nested) sequences")
        q, k, v = self._project(x, x, x)
        return self.packed_forward(q, k, v, offsets, offsets, is_causal)


def _pad_masks(attn_mask, key_padding_mask):
    """One more (unmasked) key column, for ``add_bias_kv`` / ``add_zero_attn``."""
    pad = [None if m is None else F.pad(m, (0, 1)) for m in (attn_mask, key_padding_mask)]
    return pad[0], pad[1]


class CausalSelfAttention(ConfigMixin, nn.Module):
    """The nanoGPT attention block: causal self-attention with fused q/k/v projection.

    Parameter names follow nanoGPT (``c_attn``, ``c_proj``), so its checkpoints load. Input ``(N, L, E)``
    dense or ``(N, j, E)`` jagged nested -> the same shape. Dropout ``dropout`` applies to the attention
    weights and to the output (``resid_dropout``), in training only.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    attn = layers.CausalSelfAttention(embed_dim=32, num_heads=4)
    y = attn(torch.randn(2, 16, 32))  # (N, L, E)
    assert y.shape == (2, 16, 32)
    ```
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, device=None, dtype=None
    ) -> None:
        check_heads(embed_dim, num_heads)
        check_dropout(dropout)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, **factory)  # q, k, v projections
        self.c_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = num_heads, embed_dim, dropout

    def get_config(self) -> dict[str, Any]:
        return {
            "embed_dim": self.n_embd,
            "num_heads": self.n_head,
            "dropout": self.dropout,
            "bias": self.c_attn.bias is not None,
            "dtype": dtype_name(self),
        }

    def extra_repr(self) -> str:
        return f"{self.n_embd}, num_heads={self.n_head}, dropout={self.dropout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout if self.training else 0.0
        if x.is_nested:
            q, k, v = self.c_attn(x.values()).chunk(3, dim=-1)  # (T, E) each
            offsets = x.offsets()
            y = packed_attention(q, k, v, offsets, offsets, self.n_head, dropout_p, is_causal=True)
            return torch.nested.nested_tensor_from_jagged(self.resid_dropout(self.c_proj(y)), offsets=offsets)
        if x.dim() != 3 or x.size(-1) != self.n_embd:
            raise ValueError(f"expected input (N, L, {self.n_embd}), got shape {tuple(x.shape)}")
        q, k, v = (t.unflatten(-1, (self.n_head, -1)).transpose(1, 2) for t in self.c_attn(x).chunk(3, dim=-1))
        y = kernels.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)  # (N, H, L, D)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(-2)))
