"""Drop-in torch.nn transformer layers on the fused attention of `kernels`.

Replace ``torch.nn.MultiheadAttention`` with ``layers.MultiheadAttention`` (and so on), or call
``layers.convert(model)``: the constructor, parameters, ``state_dict`` and numbers are torch's, the attention is
this package's, padded batches run on their real tokens, and nested inputs work in training too. This package
never imports triton.
"""

from .attention import MultiheadAttention
from .causal import CausalSelfAttention
from .convert import convert, revert
from .decoder import TransformerDecoder, TransformerDecoderLayer
from .encoder import TransformerEncoder, TransformerEncoderLayer
from .errors import ArgumentError, ArgumentTypeError, RuntimeArgumentError
from .kv_cache import KVCache
from .packing import Packed, pack_padded, skip_padding, unpack_padded
from .serialization import safe_globals
from .transformer import Transformer

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "CausalSelfAttention",
    "KVCache",
    "MultiheadAttention",
    "Packed",
    "RuntimeArgumentError",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "convert",
    "pack_padded",
    "revert",
    "safe_globals",
    "skip_padding",
    "unpack_padded",
]
