"""``Transformer``: a drop-in ``nn.Transformer`` built from this package's encoder and decoder.

torch's constructor builds the model (so ``state_dict`` keys, the Xavier initialisation and
``generate_square_subsequent_mask`` are torch's); its encoder and decoder then become this package's classes. A
padded source and target whose masks allow it (`encoder`, `decoder`) run end to end on their real tokens: the
source is packed once, the memory stays packed between the encoder and the decoder's cross-attention, and only the
output is unpacked (zeros at padded target positions). That needs the decoder to ignore the memory's padding
the way the encoder saw it: ``memory_key_padding_mask`` equal to ``src_key_padding_mask``, as translation models
pass it.

The encoder and decoder classes are importable from here too (``layers.transformer.TransformerEncoder``), where
earlier versions defined them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._layer import as_ours, check_layer_args, check_positive_int, layer_config, padding_route
from ._masks import check_mask_dtype, is_causal_mask
from .attention import has_hooks
from .config import ConfigMixin
from .decoder import TransformerDecoder, TransformerDecoderLayer, decoder_route
from .encoder import TransformerEncoder, TransformerEncoderLayer
from .errors import RuntimeArgumentError
from .packing import pack_keep, unpack_padded
from .scripting import TorchScriptable

__all__ = [
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]


class Transformer(TorchScriptable, ConfigMixin, nn.Transformer):
    """Drop-in ``torch.nn.Transformer`` on this package's layers.

    Same constructor, parameters, ``state_dict`` keys, initialisation and forward as the torch class; see its
    documentation and the module docstring for what runs on real tokens only.

    Example, run by the test suite:

    ```python
    import torch
    import layers

    model = layers.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                               dim_feedforward=64, batch_first=True)
    src, tgt = torch.randn(3, 10, 32), torch.randn(3, 7, 32)
    src_pad = torch.arange(10) >= torch.tensor([[10], [6], [3]])  # True = padding
    tgt_mask = layers.Transformer.generate_square_subsequent_mask(7)
    out = model(src, tgt, tgt_mask=tgt_mask, src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad)
    assert out.shape == (3, 7, 32)
    ```
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = F.relu,
        custom_encoder: Any | None = None,
        custom_decoder: Any | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        check_layer_args(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps)
        check_positive_int(num_encoder_layers, "num_encoder_layers")
        check_positive_int(num_decoder_layers, "num_decoder_layers")
        super().__init__(
            d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, activation,
            custom_encoder, custom_decoder, layer_norm_eps, batch_first, norm_first, bias, device, dtype,
        )  # fmt: skip
        as_ours(self.encoder, nn.TransformerEncoder, TransformerEncoder)
        as_ours(self.decoder, nn.TransformerDecoder, TransformerDecoder)
        for layer in getattr(self.encoder, "layers", []):
            as_ours(layer, nn.TransformerEncoderLayer, TransformerEncoderLayer)
        for layer in getattr(self.decoder, "layers", []):
            as_ours(layer, nn.TransformerDecoderLayer, TransformerDecoderLayer)

    def get_config(self) -> dict[str, Any]:
        if not (isinstance(self.encoder, TransformerEncoder) and isinstance(self.decoder, TransformerDecoder)):
            raise RuntimeArgumentError("get_config needs the built-in encoder and decoder (not custom ones)")
        config = layer_config(self.encoder.layers[0])
        return {
            "d_model": config["d_model"], "nhead": config["nhead"],
            "num_encoder_layers": len(self.encoder.layers), "num_decoder_layers": len(self.decoder.layers),
            **{k: config[k] for k in ("dim_feedforward", "dropout", "activation", "layer_norm_eps", "batch_first",
                                      "norm_first", "bias", "dtype")},
        }  # fmt: skip

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        batched = src.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if batched and src.size(batch_dim) != tgt.size(batch_dim):
            raise RuntimeArgumentError(
                f"the batch number of src and tgt must be equal, got {src.size(batch_dim)} and {tgt.size(batch_dim)} "
                f"(batch_first={self.batch_first})"
            )
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise RuntimeArgumentError(
                f"the feature number of src and tgt must be equal to d_model={self.d_model}, got {src.size(-1)} "
                f"and {tgt.size(-1)}"
            )
        for name, mask in (
            ("src_mask", src_mask), ("tgt_mask", tgt_mask), ("memory_mask", memory_mask),
            ("src_key_padding_mask", src_key_padding_mask), ("tgt_key_padding_mask", tgt_key_padding_mask),
            ("memory_key_padding_mask", memory_key_padding_mask),
        ):  # fmt: skip
            check_mask_dtype(mask, name)
        end_to_end = self._packed_end_to_end(
            src, tgt, src_mask, tgt_mask, memory_mask, src_key_padding_mask, tgt_key_padding_mask,
            memory_key_padding_mask, src_is_causal, tgt_is_causal, memory_is_causal,
        )  # fmt: skip
        if end_to_end is not None:
            return end_to_end
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(
            tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )  # fmt: skip

    def _packed_end_to_end(
        self, src, tgt, src_mask, tgt_mask, memory_mask, src_key_padding_mask, tgt_key_padding_mask,
        memory_key_padding_mask, src_is_causal, tgt_is_causal, memory_is_causal,
    ) -> torch.Tensor | None:  # fmt: skip
        """The output computed with the memory kept packed from the encoder into the decoder, or None where the
        inputs, the masks or the modules do not allow it."""
        encoder, decoder = self.encoder, self.decoder
        if not (
            isinstance(encoder, TransformerEncoder) and encoder._all_ours() and isinstance(decoder, TransformerDecoder)
        ):
            return None
        if has_hooks(encoder) or has_hooks(decoder):  # their hooks must see them called
            return None
        if src_key_padding_mask is None or not _same_mask(src_key_padding_mask, memory_key_padding_mask):
            return None
        seq = 1 if self.batch_first else 0
        if src_is_causal is None and src.dim() == 3:
            src_is_causal = is_causal_mask(src_mask, src.size(seq))
        if tgt_is_causal is None and tgt.dim() == 3:
            tgt_is_causal = is_causal_mask(tgt_mask, tgt.size(seq))
        src_route = padding_route(src, src_key_padding_mask, src_mask, src_is_causal, self.batch_first)
        route = decoder_route(
            tgt, src, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, tgt_is_causal,
            memory_is_causal, self.batch_first,
        )  # fmt: skip
        if src_route is None or route is None:
            return None
        source = pack_keep(src, src_route.keep, self.batch_first)
        memory = encoder.packed(source.values, source.offsets, src_route.causal)
        target = pack_keep(tgt, route.tgt_keep, self.batch_first)
        out = decoder.packed(target.values, target.offsets, memory, source.offsets, route.causal, route.memory_causal)
        return unpack_padded(out, route.tgt_keep, self.batch_first)


def _same_mask(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and (a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))))
