"""Drop-in ``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``, ``nn.TransformerDecoderLayer`` and
``nn.TransformerDecoder``.

Each subclasses its torch class, so constructor, parameters, ``state_dict`` keys, initialisation and
attribute names (``self_attn``, ``linear1``, ``norm1``, ...) are torch's own. Their attention modules are
this package's `MultiheadAttention` (the class of torch's freshly built module is swapped, so the random
initialisation is exactly torch's).

The encoder skips padding: given a bool key padding mask (and no attention mask other than a causal
one), it packs the real tokens, runs projections, attention and feed-forward on them only, and scatters
the result back, with **zeros at padded positions** (as torch's nested fast path returns them).
Jagged nested inputs ``(N, j, E)`` take the same packed path, in training too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._masks import check_mask_dtype, is_causal_mask
from .attention import MultiheadAttention
from .config import (
    ConfigMixin,
    activation_to_config,
    check_activation,
    check_dropout,
    check_heads,
    check_positive_int,
)
from .config import dtype_name as _dtype_name
from .packing import pack_padded, unpack_padded

__all__ = ["TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder", "TransformerEncoderLayer"]


def _check_layer_args(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps) -> None:
    check_heads(d_model, nhead, names=("d_model", "nhead"))
    check_positive_int(dim_feedforward, "dim_feedforward")
    check_dropout(dropout)
    check_activation(activation)
    if not isinstance(layer_norm_eps, (int, float)) or layer_norm_eps <= 0:
        raise ValueError(f"layer_norm_eps must be a positive float, got {layer_norm_eps!r}")


def _layer_config(layer: nn.Module) -> dict[str, Any]:
    return {
        "d_model": layer.self_attn.embed_dim,
        "nhead": layer.self_attn.num_heads,
        "dim_feedforward": layer.linear1.out_features,
        "dropout": layer.dropout.p,
        "activation": activation_to_config(layer.activation),
        "layer_norm_eps": layer.norm1.eps,
        "batch_first": layer.self_attn.batch_first,
        "norm_first": layer.norm_first,
        "bias": layer.linear1.bias is not None,
        "dtype": _dtype_name(layer),
    }


def _norm_config(norm: nn.Module | None) -> dict[str, Any] | None:
    if norm is None:
        return None
    if type(norm) is not nn.LayerNorm:
        raise ValueError(f"get_config supports norm=None or nn.LayerNorm, got {type(norm).__name__}")
    return {
        "normalized_shape": list(norm.normalized_shape),
        "eps": norm.eps,
        "elementwise_affine": norm.elementwise_affine,
        "bias": norm.bias is not None,
    }


def _norm_from_config(config: dict[str, Any] | None, dtype: str | None) -> nn.LayerNorm | None:
    if config is None:
        return None
    return nn.LayerNorm(**config, dtype=getattr(torch, dtype) if dtype else None)


def _packable(src: torch.Tensor, mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal) -> bool:
    """Whether the padded batch can run on its real tokens only: a bool key padding mask, batched input,
    and no attention mask but (the hint of) a causal one."""
    return (
        src.dim() == 3
        and isinstance(key_padding_mask, torch.Tensor)
        and key_padding_mask.dtype == torch.bool
        and (mask is None or bool(is_causal))
    )


class _FeedForwardLayer(ConfigMixin):
    """What the encoder and decoder layers share: torch's constructor, with its arguments checked first and
    the attention modules torch built made this package's (same tensors, so torch's initialisation), the
    config, and the feed-forward block."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        _check_layer_args(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps)
        super().__init__(
            d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias,
            device, dtype,
        )  # fmt: skip
        _swap_attention(self)

    def get_config(self) -> dict[str, Any]:
        return _layer_config(self)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        """torch's feed-forward block, with ReLU in place: it overwrites the first linear's output, which no
        backward needs (addmm keeps its inputs), and saves an allocation of ``(T, dim_feedforward)``."""
        h = self.linear1(x)
        h = torch.relu_(h) if self.activation is F.relu and not h.is_nested else self.activation(h)
        return self.dropout2(self.linear2(self.dropout(h)))


def _swap_attention(module: nn.Module) -> None:
    for m in module.modules():
        if type(m) is nn.MultiheadAttention:
            m.__class__ = MultiheadAttention


class TransformerEncoderLayer(_FeedForwardLayer, nn.TransformerEncoderLayer):
    """Drop-in ``torch.nn.TransformerEncoderLayer`` on this package's attention.

    Same constructor, parameters, ``state_dict`` keys and forward as the torch class; see its documentation.
    Input ``src``: ``(N, S, E)`` with ``batch_first=True`` (``(S, N, E)`` otherwise, ``(S, E)`` unbatched),
    or a jagged nested tensor ``(N, j, E)`` (``batch_first=True``), in training and evaluation.
    ``src_mask``: ``(S, S)`` or ``(N * nhead, S, S)``; ``src_key_padding_mask``: ``(N, S)``; bool True =
    masked out, as in torch. With a bool key padding mask the layer computes on real tokens only and
    returns zeros at padded positions. ``is_causal=True`` works without ``src_mask``.

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
        if src.is_nested:
            _check_nested(src, self.self_attn.batch_first, src_mask, src_key_padding_mask)
            out = self.packed_forward(src.values(), src.offsets(), is_causal)
            return torch.nested.nested_tensor_from_jagged(out, offsets=src.offsets())
        if _packable(src, src_mask, src_key_padding_mask, is_causal):
            batch_first = self.self_attn.batch_first
            packed = pack_padded(src, src_key_padding_mask, batch_first)
            out = self.packed_forward(packed.values, packed.offsets, bool(is_causal))
            return unpack_padded(out, packed.keep, batch_first)
        return self._dense_forward(src, src_mask, src_key_padding_mask, is_causal)

    def _dense_forward(self, x, src_mask, src_key_padding_mask, is_causal):
        """torch's own non-fast path, whose ``self_attn`` is this package's."""
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))

    def packed_forward(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """The layer on packed tokens ``x (T, E)`` of sequences ``offsets (N + 1,)`` -> ``(T, E)``."""

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.dropout1(self.self_attn.packed_self_attention(h, offsets, is_causal))

        if self.norm_first:
            x = x + attend(self.norm1(x))
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + attend(x))
        return self.norm2(x + self._ff_block(x))


def _check_nested(src, batch_first: bool, mask, key_padding_mask) -> None:
    if not batch_first:
        raise ValueError("nested inputs need batch_first=True: a jagged nested tensor is (N, j, E)")
    if src.layout != torch.jagged or src.dim() != 3:
        raise ValueError(f"nested input must be a jagged nested tensor (N, j, E), got layout {src.layout}")
    if mask is not None or key_padding_mask is not None:
        raise ValueError(
            "nested inputs take no attention or key padding mask (a nested batch has no padding); "
            "use is_causal=True for causal attention"
        )


class TransformerEncoder(ConfigMixin, nn.TransformerEncoder):
    """Drop-in ``torch.nn.TransformerEncoder``: a stack of `TransformerEncoderLayer`.

    A torch ``nn.TransformerEncoderLayer`` passed in is converted (its copies become this package's
    layers, same weights). A padded batch with a bool ``src_key_padding_mask`` is packed once, runs every
    layer (and the final ``norm``) on real tokens only, and is unpacked at the end: padded positions are 0.
    Jagged nested inputs work likewise, in training too. ``is_causal=None`` detects a causal ``mask``, as
    torch does.

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
            raise TypeError(f"encoder_layer must be a TransformerEncoderLayer, got {type(encoder_layer).__name__}")
        check_positive_int(num_layers, "num_layers")
        super().__init__(encoder_layer, num_layers, norm, enable_nested_tensor, mask_check)
        for layer in self.layers:
            _as_ours(layer, nn.TransformerEncoderLayer, TransformerEncoderLayer)

    def get_config(self) -> dict[str, Any]:
        return {
            "encoder_layer": self.layers[0].get_config(),
            "num_layers": self.num_layers,
            "norm": _norm_config(self.norm),
            "enable_nested_tensor": self.enable_nested_tensor,
            "mask_check": self.mask_check,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TransformerEncoder:
        config = dict(config)
        layer = TransformerEncoderLayer.from_config(config.pop("encoder_layer"))
        norm = _norm_from_config(config.pop("norm", None), _dtype_name(layer))
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
            _check_nested(src, batch_first, mask, src_key_padding_mask)
            out = self._packed(src.values(), src.offsets(), bool(is_causal))
            return torch.nested.nested_tensor_from_jagged(out, offsets=src.offsets())
        if is_causal is None:
            is_causal = is_causal_mask(mask, src.size(1 if batch_first and src.dim() == 3 else 0))
        if _packable(src, mask, src_key_padding_mask, is_causal):
            packed = pack_padded(src, src_key_padding_mask, batch_first)
            return unpack_padded(self._packed(packed.values, packed.offsets, bool(is_causal)), packed.keep, batch_first)
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return output if self.norm is None else self.norm(output)

    def _packed(self, x: torch.Tensor, offsets: torch.Tensor, is_causal: bool) -> torch.Tensor:
        for layer in self.layers:
            x = layer.packed_forward(x, offsets, is_causal)
        return x if self.norm is None else self.norm(x)


class TransformerDecoderLayer(_FeedForwardLayer, nn.TransformerDecoderLayer):
    """Drop-in ``torch.nn.TransformerDecoderLayer`` on this package's attention.

    torch's forward pass, with both attention modules (``self_attn``, ``multihead_attn``) this package's
    `MultiheadAttention`: so masks, ``tgt_is_causal`` without a mask, and jagged nested ``tgt`` and
    ``memory`` (``batch_first=True``, lengths may differ per sequence) all work as there.

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


class TransformerDecoder(ConfigMixin, nn.TransformerDecoder):
    """Drop-in ``torch.nn.TransformerDecoder``: a stack of `TransformerDecoderLayer` (torch's forward).

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
            raise TypeError(f"decoder_layer must be a TransformerDecoderLayer, got {type(decoder_layer).__name__}")
        check_positive_int(num_layers, "num_layers")
        super().__init__(decoder_layer, num_layers, norm)
        for layer in self.layers:
            _as_ours(layer, nn.TransformerDecoderLayer, TransformerDecoderLayer)

    def get_config(self) -> dict[str, Any]:
        return {
            "decoder_layer": self.layers[0].get_config(),
            "num_layers": self.num_layers,
            "norm": _norm_config(self.norm),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TransformerDecoder:
        config = dict(config)
        layer = TransformerDecoderLayer.from_config(config.pop("decoder_layer"))
        norm = _norm_from_config(config.pop("norm", None), _dtype_name(layer))
        return cls(layer, norm=norm, **config)


def _as_ours(layer: nn.Module, torch_cls: type, ours: type) -> None:
    """Swap a torch layer (and its attention modules) to this package's classes, keeping every tensor.
    A user's own subclass of the torch layer is left as it is."""
    if type(layer) is torch_cls:
        layer.__class__ = ours
    _swap_attention(layer)
