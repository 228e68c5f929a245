"""Drop-in torch.nn transformer layers on the fused attention of `kernels`.

Replace ``torch.nn.MultiheadAttention`` with ``layers.MultiheadAttention`` (and so on): the constructor,
parameters, ``state_dict`` and numbers are torch's, the attention is this package's, and jagged nested
inputs work in training too. This package never imports triton.
"""

from .attention import CausalSelfAttention, MultiheadAttention
from .convert import convert, revert
from .packing import Packed, pack_padded, unpack_padded
from .transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "CausalSelfAttention",
    "MultiheadAttention",
    "Packed",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "convert",
    "pack_padded",
    "revert",
    "unpack_padded",
]
