"""Swap the torch.nn attention/transformer modules of an existing model for this package's, and back.

The swap changes each module's class in place: parameters, buffers, hooks, training mode, device and
dtype are untouched (the very same tensors, so an optimizer built before still holds them). Only modules
whose type is exactly the torch class are swapped; a user's own subclass is left alone.
"""

from __future__ import annotations

import torch.nn as nn

from .attention import MultiheadAttention
from .decoder import TransformerDecoder, TransformerDecoderLayer
from .encoder import TransformerEncoder, TransformerEncoderLayer
from .transformer import Transformer

__all__ = ["convert", "revert"]

_OURS = {
    nn.MultiheadAttention: MultiheadAttention,
    nn.TransformerEncoderLayer: TransformerEncoderLayer,
    nn.TransformerEncoder: TransformerEncoder,
    nn.TransformerDecoderLayer: TransformerDecoderLayer,
    nn.TransformerDecoder: TransformerDecoder,
    nn.Transformer: Transformer,
}
_TORCH = {ours: theirs for theirs, ours in _OURS.items()}


def _swap(model: nn.Module, table: dict[type, type], name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"layers.{name} expects a torch.nn.Module, got {type(model).__name__}")
    for module in list(model.modules()):
        target = table.get(type(module))
        if target is None:
            continue
        module.__class__ = target
    return model


def convert(model: nn.Module) -> nn.Module:
    """Use this package's layers inside ``model``, in place; returns ``model``.

    ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``,
    ``nn.TransformerDecoderLayer``, ``nn.TransformerDecoder`` and ``nn.Transformer`` become their `layers`
    counterparts with the same weights; `revert` undoes it. A subclass of one of them (e.g. a model class that
    extends ``nn.Transformer``) keeps its class, and the torch modules inside it are converted.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    model = torch.nn.Sequential(
        torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                    enable_nested_tensor=False),
        torch.nn.Linear(16, 4),
    ).eval()
    x = torch.randn(3, 10, 16)
    before = model(x)
    layers.convert(model)
    assert isinstance(model[0].layers[1].self_attn, layers.MultiheadAttention)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    layers.revert(model)
    assert type(model[0]) is torch.nn.TransformerEncoder
    ```
    """
    return _swap(model, _OURS, "convert")


def revert(model: nn.Module) -> nn.Module:
    """Undo `convert`: this package's layers inside ``model`` become the torch.nn classes again, in place."""
    return _swap(model, _TORCH, "revert")
