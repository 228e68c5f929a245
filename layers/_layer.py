"""What the encoder and decoder layers and stacks share: torch's constructor with its arguments checked, the swap of
torch's freshly built modules to this package's classes, configs, the feed-forward block, and the rule that decides
when a padded batch runs on its real tokens only.

**Skipping padding.** A batched input with a key padding mask that only marks padding (`_masks.padding_keep`) and
an attention mask that is absent, masks nothing, or is the causal one, runs on its real tokens (packed; on the CPU
by default, anywhere inside ``layers.skip_padding(True)``) and returns **0 at padded positions**. Whenever such a
padding mask is given, padded positions are 0 on every path (the dense one too), so eager, compiled and exported
models give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._dropout import packed_dropout
from ._masks import drop_noop, is_causal_mask, padding_keep, tracing
from .attention import MultiheadAttention
from .config import ConfigMixin, activation_to_config, check_activation, check_dropout, check_heads
from .config import check_positive_int as check_positive_int
from .config import dtype_name as _dtype_name
from .errors import ArgumentError
from .packing import skipping_padding
from .scripting import TorchScriptable


class Route(NamedTuple):
    """How a padded batch runs: on its real tokens (``keep (N, L)``, True = real), causal or not."""

    keep: torch.Tensor
    causal: bool


def mask_causality(attn_mask: torch.Tensor | None, is_causal: bool | None, size: int) -> bool | None:
    """Whether attention under ``attn_mask`` is causal (True), full (False), or neither (None: the mask must be
    applied as it is): no mask or one that masks nothing is full, a causal hint or the causal mask is causal. A mask
    that requires grad is always applied as it is."""
    if attn_mask is None:
        return bool(is_causal)
    if attn_mask.requires_grad:  # a learned bias: its gradient needs the mask itself
        return None
    if is_causal or is_causal_mask(attn_mask, size):
        return True
    return False if drop_noop(attn_mask) is None else None


def padding_route(
    x: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool | None,
    batch_first: bool,
) -> Route | None:
    """The route of a batch that can skip its padding, else None (see the module docstring). Never while tracing
    (packing makes shapes depend on the data) nor where `skipping_padding` says no (off the CPU by default)."""
    if x.dim() != 3 or key_padding_mask is None or tracing() or not skipping_padding(x.device):
        return None
    expected = (x.size(0), x.size(1)) if batch_first else (x.size(1), x.size(0))
    if tuple(key_padding_mask.shape) != expected:
        raise ArgumentError(
            f"key_padding_mask must have shape (N, L) = {expected} for an input of shape {tuple(x.shape)} "
            f"(batch_first={batch_first}), got {tuple(key_padding_mask.shape)}"
        )
    keep = padding_keep(key_padding_mask)
    causal = mask_causality(attn_mask, is_causal, x.size(1 if batch_first else 0))
    return None if keep is None or causal is None else Route(keep, causal)


def zero_padding(out: torch.Tensor, key_padding_mask: torch.Tensor | None, batch_first: bool) -> torch.Tensor:
    """``out`` with 0 at the positions a bool key padding mask marks (what the packed path returns there)."""
    if key_padding_mask is None or key_padding_mask.dtype != torch.bool or out.dim() != 3:
        return out
    pad = key_padding_mask if batch_first else key_padding_mask.transpose(0, 1)
    return out.masked_fill(pad[..., None], 0.0)


def check_layer_args(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps) -> None:
    check_heads(d_model, nhead, names=("d_model", "nhead"))
    check_positive_int(dim_feedforward, "dim_feedforward")
    check_dropout(dropout)
    check_activation(activation)
    if not isinstance(layer_norm_eps, (int, float)) or layer_norm_eps <= 0:
        raise ArgumentError(f"layer_norm_eps must be a positive float, got {layer_norm_eps!r}")


def layer_config(layer: nn.Module) -> dict[str, Any]:
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


def norm_config(norm: nn.Module | None) -> dict[str, Any] | None:
    if norm is None:
        return None
    if type(norm) is not nn.LayerNorm:
        raise ArgumentError(f"get_config supports norm=None or nn.LayerNorm, got {type(norm).__name__}")
    return {
        "normalized_shape": list(norm.normalized_shape),
        "eps": norm.eps,
        "elementwise_affine": norm.elementwise_affine,
        "bias": norm.bias is not None,
    }


def norm_from_config(config: dict[str, Any] | None, dtype: str | None) -> nn.LayerNorm | None:
    if config is None:
        return None
    return nn.LayerNorm(**config, dtype=getattr(torch, dtype) if dtype else None)


def swap_attention(module: nn.Module) -> None:
    """torch's attention modules inside ``module`` become this package's."""
    for m in module.modules():
        if type(m) is nn.MultiheadAttention:
            m.__class__ = MultiheadAttention


def as_ours(layer: nn.Module, torch_cls: type, ours: type) -> None:
    """Swap a torch layer (and its attention modules) to this package's classes, keeping every tensor.
    A user's own subclass of the torch layer is left as it is."""
    if type(layer) is torch_cls:
        layer.__class__ = ours
    swap_attention(layer)


class FeedForwardLayer(TorchScriptable, ConfigMixin):
    """The encoder and decoder layers' shared part: torch's constructor, with its arguments checked first and the
    attention modules torch built made this package's (same tensors, so torch's initialisation), the config, and
    the feed-forward block."""

    _ff_dropout = "dropout2"  # the feed-forward block's last dropout: dropout2 in encoder layers, dropout3 in decoders

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
        check_layer_args(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps)
        super().__init__(
            d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias,
            device, dtype,
        )  # fmt: skip
        swap_attention(self)

    def get_config(self) -> dict[str, Any]:
        return layer_config(self)

    def _ff_block(self, x: torch.Tensor, packed: bool = False) -> torch.Tensor:
        """torch's feed-forward block, with ReLU in place when no gradient is recorded: it overwrites the first
        linear's output and saves an allocation of ``(T, dim_feedforward)``. Not in training: that output is a view
        (linear on a 3-D input), and an in-place op on a view costs three copies of it in backward (measured).
        ``packed``: ``x`` holds packed tokens ``(T, E)``, and the dropout modules run through `packed_dropout`."""
        h = self.linear1(x)
        in_place = self.activation is F.relu and not h.is_nested and not h.requires_grad
        h = torch.relu_(h) if in_place else self.activation(h)
        last = getattr(self, self._ff_dropout)
        if packed:
            return packed_dropout(last, self.linear2(packed_dropout(self.dropout, h)))
        return last(self.linear2(self.dropout(h)))

    def _packed_ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self._ff_block(x, packed=True)

    def _residual(self, x: torch.Tensor, block: Callable[[torch.Tensor], torch.Tensor], norm: nn.Module):
        """``x + block(norm(x))`` (norm first) or ``norm(x + block(x))``: torch's two layouts of a sub-layer."""
        if self.norm_first:
            return x + block(norm(x))
        return norm(x + block(x))


def check_nested_stack(src: torch.Tensor, batch_first: bool, mask, key_padding_mask) -> None:
    from .nested import check_nested

    check_nested("src", src, None, batch_first)
    if mask is not None or key_padding_mask is not None:
        raise ArgumentError(
            "nested inputs take no attention or key padding mask (a nested batch has no padding); "
            "use is_causal=True for causal attention"
        )
