"""Drop-in ``nn.TransformerDecoderLayer`` and ``nn.TransformerDecoder``.

torch's constructor, parameters and forward semantics, with both attention modules (``self_attn``,
``multihead_attn``) this package's `MultiheadAttention`. Padding is skipped as in the encoder: the target by its
``tgt_key_padding_mask``, the memory by its ``memory_key_padding_mask`` (query and key lengths then differ per
sequence, which variable-length attention takes as it is), when the attention masks allow it (`decoder_route`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn

from kernels._cpu_share import on_free_threads

from ._dropout import packed_dropout
from ._layer import (
    FeedForwardLayer,
    as_ours,
    check_positive_int,
    mask_causality,
    norm_config,
    norm_from_config,
    zero_padding,
)
from ._layer import _dtype_name as dtype_name
from ._masks import check_mask_dtype, drop_noop, is_causal_mask, padding_keep, tracing
from .attention import has_hooks
from .config import ConfigMixin
from .errors import ArgumentError, ArgumentTypeError
from .kv_cache import KVCache
from .nested import as_jagged, check_nested, like, wrap
from .packing import pack_keep, skipping_padding, unpack_padded
from .scripting import TorchScriptable

__all__ = ["TransformerDecoder", "TransformerDecoderLayer"]

MASK_NAMES = ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask")


class DecoderRoute(NamedTuple):
    """How a padded target and memory run on their real tokens (True = real)."""

    tgt_keep: torch.Tensor  # (N, T)
    memory_keep: torch.Tensor  # (N, S)
    causal: bool  # self-attention
    memory_causal: bool  # cross-attention, top-left per sequence


def decoder_route(
    tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, tgt_is_causal,
    memory_is_causal, batch_first: bool,
) -> DecoderRoute | None:  # fmt: skip
    """The route of a padded target/memory pair that can skip its padding, else None: batched inputs, at least one
    key padding mask, each one padding-only, a target mask that is absent, no-op or causal, and a memory mask that
    is absent or no-op (or comes with the ``memory_is_causal`` hint)."""
    if tgt.dim() != 3 or memory.dim() != 3 or tracing() or not skipping_padding(tgt.device):
        return None
    if tgt_key_padding_mask is None and memory_key_padding_mask is None:
        return None
    n, t = (tgt.size(0), tgt.size(1)) if batch_first else (tgt.size(1), tgt.size(0))
    s = memory.size(1) if batch_first else memory.size(0)
    keeps = []
    for kpm, length in ((tgt_key_padding_mask, t), (memory_key_padding_mask, s)):
        keep = torch.ones(n, length, dtype=torch.bool, device=tgt.device) if kpm is None else padding_keep(kpm)
        if keep is None:
            return None
        keeps.append(keep)
    causal = mask_causality(tgt_mask, tgt_is_causal, t)
    memory_causal = True if memory_is_causal else mask_causality(memory_mask, False, -1)
    if causal is None or memory_causal is None:
        return None
    return DecoderRoute(keeps[0], keeps[1], causal, memory_causal)


class TransformerDecoderLayer(FeedForwardLayer, nn.TransformerDecoderLayer):
    """Drop-in ``torch.nn.TransformerDecoderLayer`` on this package's attention.

    torch's forward pass and arguments; ``tgt``/``memory`` may be nested tensors of either layout
    (``batch_first=True``; lengths may differ per sequence and between the two), and a padded batch skips its
    padding where its masks allow it (zeros at padded target positions, as the encoder).

    Example, run by the test suite:

    ```python
    import torch
    import layers

    layer = layers.TransformerDecoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    tgt, memory = torch.randn(2, 7, 32), torch.randn(2, 11, 32)
    y = layer(tgt, memory, tgt_is_causal=True)
    assert y.shape == (2, 7, 32)
    ```
    """

    _ff_dropout = "dropout3"

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
        *,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """torch's forward. With ``kv_cache`` (a `KVCache`), ``tgt`` holds the new target tokens only: self-attention
        appends them to the cache and attends over it (causal), cross-attention projects ``memory`` once into the
        cache."""
        masks = (tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask)
        for name, mask in zip(MASK_NAMES, masks, strict=True):
            check_mask_dtype(mask, name)
        batch_first = self.self_attn.batch_first
        if kv_cache is not None:
            return self._forward_cached(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                        memory_key_padding_mask, kv_cache)  # fmt: skip
        if tgt.is_nested or memory.is_nested:
            x, x_offsets, mem, mem_offsets = _nested_pair(tgt, memory, batch_first, masks)
            out = self.packed_forward(x, x_offsets, mem, mem_offsets, bool(tgt_is_causal), bool(memory_is_causal))
            return like(wrap(out, x_offsets), tgt)
        route = decoder_route(tgt, memory, *masks, tgt_is_causal, memory_is_causal, batch_first)
        if route is not None:
            x, m = pack_keep(tgt, route.tgt_keep, batch_first), pack_keep(memory, route.memory_keep, batch_first)
            out = self.packed_forward(x.values, x.offsets, m.values, m.offsets, route.causal, route.memory_causal)
            return unpack_padded(out, route.tgt_keep, batch_first)
        out = self._residual(
            tgt, lambda x: self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal), self.norm1
        )
        out = self._residual(
            out,
            lambda x: self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal),
            self.norm2,
        )
        return zero_padding(self._residual(out, self._ff_block, self.norm3), tgt_key_padding_mask, batch_first)

    def _forward_cached(self, tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, cache):
        if tgt_key_padding_mask is not None or (tgt_mask is not None and drop_noop(tgt_mask) is not None
                                                and not is_causal_mask(tgt_mask, tgt_mask.size(-1))):  # fmt: skip
            raise ArgumentError(
                "with a kv_cache the target is decoded causally: pass no tgt_key_padding_mask and no tgt_mask but "
                "the causal one"
            )

        def attend(x: torch.Tensor) -> torch.Tensor:
            return self.dropout1(self.self_attn(x, x, x, need_weights=False, kv_cache=cache)[0])

        def cross(x: torch.Tensor) -> torch.Tensor:
            out = self.multihead_attn(
                x, memory, memory, key_padding_mask=memory_key_padding_mask, attn_mask=memory_mask,
                need_weights=False, kv_cache=cache,
            )[0]  # fmt: skip
            return self.dropout2(out)

        x = self._residual(tgt, attend, self.norm1)
        x = self._residual(x, cross, self.norm2)
        return self._residual(x, self._ff_block, self.norm3)

    def packed_forward(self, x, x_offsets, memory, memory_offsets, is_causal: bool, memory_is_causal: bool):
        """The layer on packed target tokens ``x (T, E)`` and packed ``memory (S_total, E)`` -> ``(T, E)`` (on the
        threads other processes leave free, forward and backward: see `on_free_threads`)."""

        def run(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            return self._packed_forward(x, x_offsets, memory, memory_offsets, is_causal, memory_is_causal)

        return on_free_threads(run, x, memory)

    def _packed_forward(self, x, x_offsets, memory, memory_offsets, is_causal: bool, memory_is_causal: bool):
        def attend(h: torch.Tensor) -> torch.Tensor:
            return packed_dropout(self.dropout1, self.self_attn.packed_call(h, x_offsets, is_causal))

        def cross(h: torch.Tensor) -> torch.Tensor:
            out = self.multihead_attn.packed_call(h, x_offsets, memory_is_causal, memory, memory_offsets)
            return packed_dropout(self.dropout2, out)

        x = self._residual(x, attend, self.norm1)
        x = self._residual(x, cross, self.norm2)
        return self._residual(x, self._packed_ff_block, self.norm3)


def _nested_pair(tgt, memory, batch_first: bool, masks):
    """Packed tokens and offsets of a nested target and memory (both must be nested, without masks)."""
    for name, t in (("tgt", tgt), ("memory", memory)):
        if not t.is_nested:
            raise ArgumentError(f"{name} is dense but the other input is nested; pass tgt and memory both nested")
        check_nested(name, t, None, batch_first)
    if any(m is not None for m in masks):
        raise ArgumentError(
            "nested inputs take no attention or key padding masks (a nested batch has no padding); "
            "use tgt_is_causal=True for causal self-attention"
        )
    tgt, memory = as_jagged(tgt), as_jagged(memory)
    return tgt.values(), tgt.offsets(), memory.values(), memory.offsets()


class TransformerDecoder(TorchScriptable, ConfigMixin, nn.TransformerDecoder):
    """Drop-in ``torch.nn.TransformerDecoder``: a stack of `TransformerDecoderLayer`.

    A padded target and memory that can skip their padding are packed once for all layers (and the final
    ``norm``); nested inputs work likewise. ``tgt_is_causal=None`` detects a causal ``tgt_mask``, as torch does.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    layer = layers.TransformerDecoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    decoder = layers.TransformerDecoder(layer, num_layers=2, norm=torch.nn.LayerNorm(32))
    y = decoder(torch.randn(2, 7, 32), torch.randn(2, 11, 32), tgt_is_causal=True)
    assert y.shape == (2, 7, 32)
    ```
    """

    def __init__(self, decoder_layer: nn.TransformerDecoderLayer, num_layers: int, norm: nn.Module | None = None):
        if not isinstance(decoder_layer, nn.TransformerDecoderLayer):
            raise ArgumentTypeError(
                f"decoder_layer must be a TransformerDecoderLayer, got {type(decoder_layer).__name__}"
            )
        check_positive_int(num_layers, "num_layers")
        super().__init__(decoder_layer, num_layers, norm)
        for layer in self.layers:
            as_ours(layer, nn.TransformerDecoderLayer, TransformerDecoderLayer)

    def get_config(self) -> dict[str, Any]:
        return {
            "decoder_layer": self.layers[0].get_config(),
            "num_layers": self.num_layers,
            "norm": norm_config(self.norm),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TransformerDecoder:
        config = dict(config)
        layer = TransformerDecoderLayer.from_config(config.pop("decoder_layer"))
        norm = norm_from_config(config.pop("norm", None), dtype_name(layer))
        return cls(layer, norm=norm, **config)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        kv_cache: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """torch's forward; with ``kv_cache`` (one `KVCache` per layer, e.g. ``KVCache.for_decoder(decoder, ...)``)
        ``tgt`` holds the new target tokens only (incremental decoding, see `TransformerDecoderLayer.forward`)."""
        masks = (tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask)
        for name, mask in zip(MASK_NAMES, masks, strict=True):
            check_mask_dtype(mask, name)
        if kv_cache is not None:
            if len(kv_cache) != len(self.layers):
                raise ArgumentError(f"kv_cache holds {len(kv_cache)} caches for {len(self.layers)} layers")
            output = tgt
            for layer, cache in zip(self.layers, kv_cache, strict=True):
                output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                               memory_key_padding_mask=memory_key_padding_mask, kv_cache=cache)  # fmt: skip
            return output if self.norm is None else self.norm(output)
        batch_first = self.layers[0].self_attn.batch_first
        if tgt.is_nested or memory.is_nested:
            x, x_offsets, mem, mem_offsets = _nested_pair(tgt, memory, batch_first, masks)
            out = self.packed(x, x_offsets, mem, mem_offsets, bool(tgt_is_causal), bool(memory_is_causal))
            return like(wrap(out, x_offsets), tgt)
        if tgt_is_causal is None:
            tgt_is_causal = is_causal_mask(tgt_mask, tgt.size(1 if batch_first and tgt.dim() == 3 else 0))
        ours = all(isinstance(layer, TransformerDecoderLayer) for layer in self.layers)
        route = decoder_route(tgt, memory, *masks, tgt_is_causal, memory_is_causal, batch_first) if ours else None
        if route is not None:
            x, m = pack_keep(tgt, route.tgt_keep, batch_first), pack_keep(memory, route.memory_keep, batch_first)
            out = self.packed(x.values, x.offsets, m.values, m.offsets, route.causal, route.memory_causal)
            return unpack_padded(out, route.tgt_keep, batch_first)
        output = tgt
        for layer in self.layers:
            output = layer(
                output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                memory_is_causal=memory_is_causal,
            )  # fmt: skip
        output = output if self.norm is None else self.norm(output)
        return zero_padding(output, tgt_key_padding_mask, batch_first)

    def packed(self, x, x_offsets, memory, memory_offsets, is_causal: bool, memory_is_causal: bool) -> torch.Tensor:
        """The stack (and its norm) on packed target tokens and packed memory (on the threads other processes leave
        free, forward and backward: see `on_free_threads`)."""

        def run(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            return self._packed(x, x_offsets, memory, memory_offsets, is_causal, memory_is_causal)

        return on_free_threads(run, x, memory)

    def _packed(self, x, x_offsets, memory, memory_offsets, is_causal: bool, memory_is_causal: bool) -> torch.Tensor:
        for layer in self.layers:
            if has_hooks(layer):  # called as a module, with nested tensors, so that its hooks see the call
                kwargs = {"tgt_is_causal": is_causal, "memory_is_causal": memory_is_causal}
                x = layer(wrap(x, x_offsets), wrap(memory, memory_offsets), **kwargs).values()
            else:
                x = layer.packed_forward(x, x_offsets, memory, memory_offsets, is_causal, memory_is_causal)
        return x if self.norm is None else self.norm(x)
