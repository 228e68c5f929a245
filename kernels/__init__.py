"""Fused attention kernels and the functional entry point of fusedlayers.

Public API::

    scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False)
    sdpa_kernel([Backend.TRITON, Backend.TORCH, Backend.MATH])   # restrict the backends
    explain(query, key, value, ...)                              # which backend, and why not the others
    attention_with_weights(query, key, value, ...)               # (output, weights), the explicit path
    varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, ...)   # packed sequences, no padding
    sliding_window(L, S, left, right=0, lower_right=False)       # a band mask: windows, causal alignments
    decode_attention(q, key_cache, value_cache, lengths)         # new tokens over a key/value cache
    dropout(input, p, training=True)                             # dropout with cheaper masks on CPU

``triton`` is imported only inside this package, and only where it is installed.
"""

from .backends import Backend, NoBackendAvailableError, sdpa_kernel
from .decode import decode_attention
from .dropout_masks import dropout
from .masks import Band, sliding_window
from .reference import attention_reference
from .sdpa import Explanation, attention_with_weights, explain, scaled_dot_product_attention
from .varlen import varlen_attention

__all__ = [
    "Backend",
    "Band",
    "Explanation",
    "NoBackendAvailableError",
    "attention_reference",
    "attention_with_weights",
    "decode_attention",
    "dropout",
    "explain",
    "scaled_dot_product_attention",
    "sdpa_kernel",
    "sliding_window",
    "varlen_attention",
]
