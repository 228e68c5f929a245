"""Drop-in ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``.

Each subclasses its torch class, so constructor, parameters, ``state_dict`` keys, initialisation and attribute
names (``self_attn``, ``linear1``, ``norm1``, ...) are torch's own; the attention module is this package's
`MultiheadAttention` (the class of torch's freshly built module is swapped, so the random initialisation is
exactly torch's). A padded batch runs on its real tokens only (`_layer.padding_route`), the stack packing it once
for all its layers; nested inputs of either layout take the same packed path, in training too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from kernels._cpu_share import on_free_threads

from ._dropout import packed_dropout
from ._layer import (
    FeedForwardLayer,
    as_ours,
    check_nested_stack,
    check_positive_int,
    norm_config,
    norm_from_config,
    padding_route,
    zero_padding,
)
from ._layer import _dtype_name as dtype_name
from ._masks import check_mask_dtype, is_causal_mask
from .attention import has_hooks
from .config import ConfigMixin
from .errors import ArgumentTypeError
from .nested import as_jagged, like, wrap
from .packing import pack_keep, unpack_padded
from .scripting import TorchScriptable

__all__ = ["TransformerEncoder", "TransformerEncoderLayer"]


class TransformerEncoderLayer(FeedForwardLayer, nn.TransformerEncoderLayer):
    """Drop-in ``torch.nn.TransformerEncoderLayer`` on this package's attention.

    Same constructor, parameters, ``state_dict`` keys and forward as the torch class; see its documentation.
    Input ``src``: ``(N, S, E)`` with ``batch_first=True`` (``(S, N, E)`` otherwise, ``(S, E)`` unbatched),
    or a nested tensor ``(N, j, E)`` of either layout (``batch_first=True``), in training and evaluation.
    ``src_mask``: ``(S, S)`` or ``(N * nhead, S, S)``; ``src_key_padding_mask``: ``(N, S)``; bool True =
    masked out, as in torch. With a key padding mask the layer computes on real tokens only where the masks allow
    it, and returns zeros at padded positions. ``is_causal=True`` works without ``src_mask``.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    layer = layers.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    x = torch.nested.nested_tensor([torch.randn(n, 32) for n in (3, 9)], layout=torch.jagged)
    y = layer(x)  # nested in, nested out, with gradients
    y.values().sum().backward()
    assert y.is_nested and layer.linear1.weight.grad is not None
    ```
    """

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        check_mask_dtype(src_mask, "src_mask")
        check_mask_dtype(src_key_padding_mask, "src_key_padding_mask")
        batch_first = self.self_attn.batch_first
        if src.is_nested:
            check_nested_stack(src, batch_first, src_mask, src_key_padding_mask)
            jagged = as_jagged(src)
            return like(
                wrap(self.packed_forward(jagged.values(), jagged.offsets(), bool(is_causal)), jagged.offsets()), src
            )
        route = padding_route(src, src_key_padding_mask, src_mask, is_causal, batch_first)
        if route is not None:
            packed = pack_keep(src, route.keep, batch_first)
            return unpack_padded(
                self.packed_forward(packed.values, packed.offsets, route.causal), route.keep, batch_first
            )
        out = self._residual(src, lambda x: self._sa_block(x, src_mask, src_key_padding_mask, is_causal), self.norm1)
        return zero_padding(self._residual(out, self._ff_block, self.norm2), src_key_padding_mask, batch_first)

    def packed_forward(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """The layer on packed tokens ``x (T, E)`` of sequences ``offsets (N + 1,)`` -> ``(T, E)`` (on the threads
        other processes leave free, forward and backward: see `on_free_threads`)."""
        return on_free_threads(lambda t: self._packed_forward(t, offsets, is_causal), x)

    def _packed_forward(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        def attend(h: torch.Tensor) -> torch.Tensor:
            return packed_dropout(self.dropout1, self.self_attn.packed_call(h, offsets, is_causal))

        x = self._residual(x, attend, self.norm1)
        return self._residual(x, self._packed_ff_block, self.norm2)


def call_packed(layer: nn.Module, x: torch.Tensor, offsets: torch.Tensor, **kwargs) -> torch.Tensor:
    """``layer.packed_forward(x, offsets, ...)``, or, with hooks on the layer, the layer called as a module with
    the packed tokens as a nested tensor, so that its hooks see the call."""
    if has_hooks(layer):
        return layer(wrap(x, offsets), **kwargs).values()
    return layer.packed_forward(x, offsets, *kwargs.values())


class TransformerEncoder(TorchScriptable, ConfigMixin, nn.TransformerEncoder):
    """Drop-in ``torch.nn.TransformerEncoder``: a stack of `TransformerEncoderLayer`.

    A torch ``nn.TransformerEncoderLayer`` passed in is converted (its copies become this package's layers, same
    weights). A padded batch that can skip its padding is packed once, runs every layer (and the final ``norm``)
    on real tokens only, and is unpacked at the end: padded positions are 0. Nested inputs of either layout work
    likewise, in training too. ``is_causal=None`` detects a causal ``mask``, as torch does.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    layer = layers.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    encoder = layers.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x = torch.randn(3, 12, 32)  # (N, S, E)
    pad = torch.arange(12) >= torch.tensor([[12], [5], [8]])  # True = padding
    y = encoder(x, src_key_padding_mask=pad)
    assert y.shape == (3, 12, 32) and (y[1, 5:] == 0).all()
    ```
    """

    def __init__(
        self,
        encoder_layer: nn.TransformerEncoderLayer,
        num_layers: int,
        norm: nn.Module | None = None,
        enable_nested_tensor: bool = True,
        mask_check: bool = True,
    ) -> None:
        if not isinstance(encoder_layer, nn.TransformerEncoderLayer):
            raise ArgumentTypeError(
                f"encoder_layer must be a TransformerEncoderLayer, got {type(encoder_layer).__name__}"
            )
        check_positive_int(num_layers, "num_layers")
        super().__init__(encoder_layer, num_layers, norm, enable_nested_tensor, mask_check)
        for layer in self.layers:
            as_ours(layer, nn.TransformerEncoderLayer, TransformerEncoderLayer)

    def get_config(self) -> dict[str, Any]:
        return {
            "encoder_layer": self.layers[0].get_config(),
            "num_layers": self.num_layers,
            "norm": norm_config(self.norm),
            "enable_nested_tensor": self.enable_nested_tensor,
            "mask_check": self.mask_check,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TransformerEncoder:
        config = dict(config)
        layer = TransformerEncoderLayer.from_config(config.pop("encoder_layer"))
        norm = norm_from_config(config.pop("norm", None), dtype_name(layer))
        return cls(layer, norm=norm, **config)

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        check_mask_dtype(mask, "mask")
        check_mask_dtype(src_key_padding_mask, "src_key_padding_mask")
        batch_first = self.layers[0].self_attn.batch_first
        if src.is_nested:
            check_nested_stack(src, batch_first, mask, src_key_padding_mask)
            jagged = as_jagged(src)
            return like(wrap(self.packed(jagged.values(), jagged.offsets(), bool(is_causal)), jagged.offsets()), src)
        if is_causal is None:
            is_causal = is_causal_mask(mask, src.size(1 if batch_first and src.dim() == 3 else 0))
        route = padding_route(src, src_key_padding_mask, mask, is_causal, batch_first) if self._all_ours() else None
        if route is not None:
            packed = pack_keep(src, route.keep, batch_first)
            return unpack_padded(self.packed(packed.values, packed.offsets, route.causal), route.keep, batch_first)
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        output = output if self.norm is None else self.norm(output)
        return zero_padding(output, src_key_padding_mask, batch_first)

    def _all_ours(self) -> bool:
        return all(isinstance(layer, TransformerEncoderLayer) for layer in self.layers)

    def packed(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """The stack (and its norm) on packed tokens ``x (T, E)`` of sequences ``offsets (N + 1,)`` (on the threads
        other processes leave free, forward and backward: see `on_free_threads`)."""
        return on_free_threads(lambda t: self._packed(t, offsets, is_causal), x)

    def _packed(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        for layer in self.layers:
            x = call_packed(layer, x, offsets, is_causal=is_causal)
        return x if self.norm is None else self.norm(x)
