"""``MultiheadAttention``: a drop-in ``torch.nn.MultiheadAttention`` on `kernels.scaled_dot_product_attention`.

It subclasses ``torch.nn.MultiheadAttention``: the constructor, the parameters and their names, the initialisation
(same random draws for the same seed) and ``isinstance`` checks are torch's own; the forward pass is this
package's. The dense path performs torch's own sequence of operations around the attention (the same projections
on the same memory layouts, the output laid out as torch lays it out), so numbers, dtype behaviour and dropout
draws match torch's; only the attention itself, the masks (kept bool, a mask that masks nothing dropped) and the
attention weights (one fused softmax) differ.

Shape legend: ``N`` batch, ``L`` target length, ``S`` source length, ``E`` embed dim, ``H`` heads,
``D = E / H`` head dim, ``T`` total tokens of a packed (nested) batch.
"""

from __future__ import annotations

import math
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
    drop_noop,
    merge_masks,
    tracing,
)
from .config import ConfigMixin, check_dropout, check_heads, check_positive_int, dtype_name
from .errors import ArgumentError, RuntimeArgumentError
from .kv_cache import KVCache, cached_attention
from .nested import as_jagged, check_nested, like, wrap
from .scripting import TorchScriptable

__all__ = ["MultiheadAttention", "has_hooks", "packed_attention"]


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


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks (its own or global ones): the layers then call it through
    ``__call__`` with nested tensors even on their packed paths, so that the hooks see the call."""
    from torch.nn.modules import module as torch_module

    own = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    glob = (
        torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks,
        torch_module._global_backward_hooks, torch_module._global_backward_pre_hooks,
    )  # fmt: skip
    return any(len(h) for h in own + glob)


class MultiheadAttention(TorchScriptable, ConfigMixin, nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` on this package's fused attention.

    Same constructor, parameters, ``state_dict`` keys, initialisation, forward arguments and return values
    as ``torch.nn.MultiheadAttention``; see its documentation. Masks follow the ``nn`` convention:
    **bool True = masked out** (the opposite of F.sdpa), float = added to the scores.

    What differs:

    - Nested inputs ``(N, j, E)`` of either layout (``batch_first=True``, ``need_weights=False``) work in
      training and evaluation, with gradients; query and key/value may have different lengths per sequence.
    - ``is_causal=True`` works without an ``attn_mask`` (torch requires one as a hint).
    - A query row that may attend to nothing returns 0, and zero weights (torch returns NaN).
    - A mask that masks nothing (all False, all zeros) costs nothing (it is dropped, on CPU).

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
    out, weights = mha(x, x, x, key_padding_mask=pad)
    assert out.shape == (2, 10, 64) and weights.shape == (2, 10, 10)

    ref = torch.nn.MultiheadAttention(64, 8, batch_first=True)
    ref.load_state_dict(mha.state_dict())  # the same parameters, both ways
    expected, _ = ref(x, x, x, key_padding_mask=pad)
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
            embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device, dtype
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
        defaults = {"dropout": 0.0, "bias": True, "add_bias_kv": False, "add_zero_attn": False, "batch_first": False}
        shown = [f"{cfg['embed_dim']}, num_heads={cfg['num_heads']}"]
        shown += [f"{k}={v}" for k, v in cfg.items() if k in defaults and v != defaults[k]]
        if not self._qkv_same_embed_dim:
            shown.append(f"kdim={self.kdim}, vdim={self.vdim}")
        return ", ".join(shown)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """The input projections as torch computes them (one matmul when query, key and value are one tensor),
        without torch's copies into separate buffers: q, k, v are views."""
        bias = self.in_proj_bias
        if self._qkv_same_embed_dim:
            if query is key and key is value:
                return F.linear(query, self.in_proj_weight, bias).chunk(3, dim=-1)
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
        if key is value and self._qkv_same_embed_dim:  # one matmul for keys and values, as torch
            e = self.embed_dim
            kv = F.linear(key, self.in_proj_weight[e:], None if bias is None else bias[e:])
            return (F.linear(query, w_q, b_q), *kv.chunk(2, dim=-1))
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
        *,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``torch.nn.MultiheadAttention.forward``; also takes nested tensors (see the class).

        ``kv_cache`` (a `KVCache`, for incremental decoding): with ``query is key``, self-attention whose new tokens'
        keys/values are appended to the cache and which attends over everything cached (causal); otherwise
        cross-attention to ``key``/``value`` (a decoder's memory), whose projections the cache keeps after the first
        call. Weights are not returned (``None``)."""
        if kv_cache is not None:
            return self._forward_cached(query, key, value, key_padding_mask, attn_mask, is_causal, kv_cache), None
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal), None
        return self._forward_dense(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )

    def _check_dense(self, query, key, value, key_padding_mask, attn_mask) -> bool:
        """torch's shape checks (``AssertionError`` there; `ArgumentError` here, which is both); whether batched."""
        if query.dim() not in (2, 3):
            raise ArgumentError(
                f"query must be (L, E) unbatched or {'(N, L, E)' if self.batch_first else '(L, N, E)'} batched "
                f"(batch_first={self.batch_first}), got shape {tuple(query.shape)}"
            )
        for name, t, dim in (("key", key, self.kdim), ("value", value, self.vdim)):
            if t.dim() != query.dim():
                raise ArgumentError(
                    f"{name} has shape {tuple(t.shape)} but query has {tuple(query.shape)}: both batched "
                    "(3 dims) or both unbatched (2 dims)"
                )
            if t.size(-1) != dim:
                raise ArgumentError(f"{name} must have {dim} features (the last dim), got shape {tuple(t.shape)}")
        if query.size(-1) != self.embed_dim:
            raise ArgumentError(
                f"query must have embed_dim={self.embed_dim} features (the last dim), got shape {tuple(query.shape)}"
            )
        if key.shape[:-1] != value.shape[:-1]:
            raise ArgumentError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must agree but in the last dim")
        check_mask_dtype(key_padding_mask, "key_padding_mask")
        check_mask_dtype(attn_mask, "attn_mask")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise ArgumentError(f"attn_mask must be 2-D (L, S) or 3-D (N * num_heads, L, S), got {attn_mask.dim()}-D")
        return query.dim() == 3

    def _forward_dense(
        self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
    ):
        batched = self._check_dense(query, key, value, key_padding_mask, attn_mask)
        # torch's layout: (L, N, E) for the projections; transposed views keep the `query is key` identity
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        elif self.batch_first:
            same_qk, same_kv = query is key, key is value
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        L, N, E = query.shape
        S, H = key.size(0), self.num_heads
        if query.size(1) != key.size(1):
            raise RuntimeArgumentError(f"query holds {query.size(1)} sequences but key holds {key.size(1)}")
        if key_padding_mask is not None:
            check_key_padding_mask_shape(key_padding_mask, N, S, batched)
            key_padding_mask = key_padding_mask.view(N, S)
        if attn_mask is not None:
            check_attn_mask_shape(attn_mask, N, H, L, S)
        key_padding_mask, attn_mask = drop_noop(key_padding_mask), drop_noop(attn_mask)

        # torch's rule: the is_causal hint replaces attn_mask unless key padding or weights need a mask.
        use_causal_flag = False
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask, use_causal_flag = None, True
        elif is_causal and attn_mask is None:  # torch raises here; the mask is what the hint means
            attn_mask = causal_mask(L, S, query.device)

        q, k, v = self._project(query, key, value)  # (L, N, E), (S, N, E), (S, N, E)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, N, E)])
            v = torch.cat([v, self.bias_v.expand(1, N, E)])
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        q, k, v = (t.unflatten(-1, (H, -1)).permute(1, 2, 0, 3) for t in (q, k, v))  # (N, H, *, D) views
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, H, 1, k.size(-1))], dim=2)
            v = torch.cat([v, v.new_zeros(N, H, 1, v.size(-1))], dim=2)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)

        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = _attention_with_weights(q, k, v, attn_mask, key_padding_mask, dropout_p)
        else:
            mask = merge_masks(attn_mask, key_padding_mask, N, H, q.dtype)  # broadcastable to (N, H, L, S)
            out = kernels.scaled_dot_product_attention(q, k, v, mask, dropout_p, use_causal_flag)
        # torch's output layout: (L, N, E) memory, batch-first as a transposed view (so dropout draws match)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L * N, E)).view(L, N, E)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
            if tracing():  # as torch: exported graphs keep a contiguous output
                out = out.contiguous()
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights  # (N, L, S) or (N, H, L, S)
            weights = weights if batched else weights.squeeze(0)
        return out, weights

    def _forward_nested(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
        for name, t, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if not t.is_nested:
                raise ArgumentError(
                    f"{name} is a dense tensor but another input is nested; pass query, key and value all as nested "
                    f"tensors (N, j, E), got {name} of shape {tuple(t.shape)}"
                )
            check_nested(name, t, dim, self.batch_first)
        if need_weights:
            raise ArgumentError(
                "need_weights=True is not supported with nested inputs (the weights of ragged sequences have no "
                "common shape); pass need_weights=False"
            )
        if key_padding_mask is not None or attn_mask is not None:
            raise ArgumentError(
                "nested inputs take no key_padding_mask or attn_mask (a nested batch has no padding); "
                "use is_causal=True for causal attention"
            )
        if self.bias_k is not None or self.add_zero_attn:
            raise ArgumentError("add_bias_kv and add_zero_attn are not supported with nested inputs")
        original = query
        same_qk, same_kv = query is key, key is value
        query = as_jagged(query)
        key = query if same_qk else as_jagged(key)
        value = key if same_kv else as_jagged(value)
        q_vals = query.values()  # (Tq, E)
        k_vals = q_vals if same_qk else key.values()
        v_vals = k_vals if same_kv else value.values()
        q, k, v = self._project(q_vals, k_vals, v_vals)
        out = self.packed_forward(q, k, v, query.offsets(), key.offsets(), is_causal)
        return like(wrap(out, query.offsets()), original)

    def _forward_cached(self, query, key, value, key_padding_mask, attn_mask, is_causal, cache: KVCache):
        """Incremental decoding (see `forward`): dense ``(N, T, E)`` new tokens (``(T, N, E)`` unless batch_first)."""
        if query.is_nested or query.dim() != 3:
            raise ArgumentError(f"kv_cache takes batched dense new tokens, got {tuple(query.shape)}")
        if self.bias_k is not None or self.add_zero_attn:
            raise ArgumentError("add_bias_kv and add_zero_attn are not supported with a kv_cache")
        if self.training and self.dropout > 0:
            raise ArgumentError("kv_cache is for inference: call .eval() (attention dropout is not applied to caches)")
        x = query if self.batch_first else query.transpose(0, 1)  # (N, T, E)
        H = self.num_heads
        if query is key:  # self-attention over the cache
            if key_padding_mask is not None or (attn_mask is not None and not is_causal):
                raise ArgumentError(
                    "with a kv_cache, self-attention is causal over the cached tokens: pass no key_padding_mask and "
                    "no attn_mask but the causal one (with is_causal=True)"
                )
            q, k, v = (t.unflatten(-1, (H, -1)) for t in self._project(x, x, x))  # (N, T, H, D)
            out = cached_attention(q, k, v, cache)
        else:  # cross-attention: the memory's keys/values, projected once
            memory_k = key if self.batch_first else key.transpose(0, 1)
            memory_v = value if self.batch_first else value.transpose(0, 1)
            if cache.memory is None:
                _, k, v = self._project(memory_k[:, :1], memory_k, memory_v)
                cache.memory = (k.unflatten(-1, (H, -1)).transpose(1, 2), v.unflatten(-1, (H, -1)).transpose(1, 2))
            q = self._project(x, memory_k[:, :1], memory_v[:, :1])[0].unflatten(-1, (H, -1)).transpose(1, 2)
            check_mask_dtype(key_padding_mask, "key_padding_mask")
            mask = merge_masks(attn_mask, key_padding_mask, x.size(0), H, q.dtype)
            out = kernels.scaled_dot_product_attention(q, *cache.memory, mask).transpose(1, 2)  # (N, T, H, D)
        out = self.out_proj(out.flatten(-2))  # (N, T, E)
        return out if self.batch_first else out.transpose(0, 1)

    def packed_forward(self, q, k, v, q_offsets, k_offsets, is_causal: bool) -> torch.Tensor:
        """Attention and output projection on projected, packed tokens: ``(Tq, E)`` -> ``(Tq, E)``."""
        dropout_p = self.dropout if self.training else 0.0
        return self.out_proj(packed_attention(q, k, v, q_offsets, k_offsets, self.num_heads, dropout_p, is_causal))

    def packed_call(
        self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool, memory=None, memory_offsets=None
    ) -> torch.Tensor:
        """Self-attention over packed tokens ``x (T, E)`` with ``offsets (N + 1,)`` (or cross-attention to packed
        ``memory``) -> ``(T, E)``: what the layers call on their padding-free paths. With hooks registered the
        module is called as a module, with nested tensors, so that the hooks see the call."""
        if self.bias_k is not None or self.add_zero_attn:
            raise ArgumentError("add_bias_kv and add_zero_attn are not supported on packed (nested) sequences")
        if has_hooks(self):
            q = wrap(x, offsets)
            kv = q if memory is None else wrap(memory, memory_offsets)
            return self(q, kv, kv, need_weights=False, is_causal=is_causal)[0].values()
        if memory is None:
            q, k, v = self._project(x, x, x)
            return self.packed_forward(q, k, v, offsets, offsets, is_causal)
        q, k, v = self._project(x, memory, memory)
        return self.packed_forward(q, k, v, offsets, memory_offsets, is_causal)


def _pad_masks(attn_mask, key_padding_mask):
    """One more (unmasked) key column, for ``add_bias_kv`` / ``add_zero_attn``."""
    pad = [None if m is None else F.pad(m, (0, 1)) for m in (attn_mask, key_padding_mask)]
    return pad[0], pad[1]


def _attention_with_weights(q, k, v, attn_mask, key_padding_mask, dropout_p):
    """torch's ``need_weights=True`` path, as fast: ``baddbmm`` of the additive mask and the scaled scores, one fused
    softmax, dropout, ``bmm``. Rows with nothing to attend to give zero weights (torch: NaN): they are found from
    the mask (one pass over it) and unmasked before the softmax, then zeroed."""
    N, H, L, D = q.shape
    S = k.size(2)
    mask = merge_masks(attn_mask, key_padding_mask, N, H, q.dtype)  # bool keep, or additive float
    empty = None
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (N or 1, H or 1, L or 1, S)
        if mask.dtype == torch.bool:
            empty = ~mask.any(dim=-1, keepdim=True)
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~(mask | empty), float("-inf"))
        else:
            empty = torch.isneginf(mask).all(dim=-1, keepdim=True)
            mask = mask.masked_fill(empty, 0.0)
        if not tracing() and not empty.any():
            empty = None
        # (N * H or 1, L or 1, S): baddbmm broadcasts the mask, so only the batch and head dims it varies over
        # are materialised (a key padding mask stays one row per sequence and head, as in torch)
        if mask.size(0) == 1 and mask.size(1) == 1:
            mask = mask.reshape(1, mask.size(2), S)
        else:
            mask = mask.expand(N, H, mask.size(2), S).reshape(N * H, mask.size(2), S)
    q_scaled = q.reshape(N * H, L, D) * math.sqrt(1.0 / D)
    kt = k.reshape(N * H, S, D).transpose(1, 2)
    scores = torch.baddbmm(mask, q_scaled, kt) if mask is not None else torch.bmm(q_scaled, kt)
    weights = torch.softmax(scores, dim=-1).view(N, H, L, S)
    if empty is not None:
        weights = weights.masked_fill(empty.expand(N, H, L, 1) if empty.dim() == 4 else empty, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = torch.bmm(weights.reshape(N * H, L, S), v.reshape(N * H, S, -1)).view(N, H, L, -1)
    return out, weights
