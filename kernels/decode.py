"""``kernels.decode_attention``: the newest queries of each sequence over its key/value cache (incremental decoding)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import triton as fused
from ._validate import validate_sdpa_args
from .backends import Backend
from .dispatch import DENSE, profiled, select

__all__ = ["decode_attention"]


def decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Attention of the ``T`` newest tokens of each sequence over the keys/values cached for it.

    Shapes (``B`` sequences, ``H``/``Hk`` query/key heads, ``T`` new tokens, ``max_len`` cache slots)::

        query        (B, H,  T, E)         the new tokens, already appended to the cache
        key_cache    (B, Hk, max_len, E)   slots [0, lengths[b]) of sequence b are in use
        value_cache  (B, Hk, max_len, Ev)
        lengths      (B,) int              keys in use per sequence, the new ones included
        returns      (B, H,  T, Ev)

    Token ``t`` sees the keys ``j <= lengths[b] - T + t`` (causal, bottom-right aligned). The lengths stay on the
    device (nothing is read on the host, so one compiled step serves every position). ``Backend.TRITON`` runs a
    split-key (flash-decoding) kernel that reads each cached key once for all query heads sharing it; the other
    backends attend over all ``max_len`` slots with a mask (on CPU: over the slots in use, without a mask where
    every sequence has as many). Inference: no gradients flow through the fused kernel
    (the dispatcher picks another backend for inputs that require grad).

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    cache_k = cache_v = torch.randn(2, 4, 32, 16)  # (B, Hk, max_len, E)
    lengths = torch.tensor([5, 20])  # keys in use, the newest included
    q = torch.randn(2, 4, 1, 16)  # one new token per sequence
    out = kernels.decode_attention(q, cache_k, cache_v, lengths)
    alone = kernels.scaled_dot_product_attention(q[1:], cache_k[1:, :, :20], cache_v[1:, :, :20])
    torch.testing.assert_close(out[1:], alone)
    ```
    """
    validate_sdpa_args(query, key_cache, value_cache, None, 0.0, False, scale, enable_gqa)
    if query.dim() != 4:
        raise ValueError(f"query must be (B, H, T, E), got shape {tuple(query.shape)}")
    if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.shape != (query.size(0),):
        raise ValueError(
            f"lengths must be an integer tensor (B,) = ({query.size(0)},) of keys in use per sequence, got "
            f"{getattr(lengths, 'shape', type(lengths).__name__)}"
        )
    if lengths.device != query.device:
        raise ValueError(f"lengths is on {lengths.device} but query is on {query.device}; move it to one device")
    return decode_attention_unchecked(query, key_cache, value_cache, lengths, scale, enable_gqa)


def decode_attention_unchecked(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    enable_gqa: bool = False,
    in_use: tuple[int, int] | None = None,
) -> torch.Tensor:
    """`decode_attention` for callers that validated the inputs themselves (`layers.KVCache`'s attention): a
    decoding step on CPU at batch 1 is a few dozen small operations, and validating again costs a measurable share.
    ``in_use``: the shortest and longest lengths, where the caller knows them (on CPU; else they are read)."""
    needs_grad = query.requires_grad or key_cache.requires_grad or value_cache.requires_grad
    backend, _ = select(query, key_cache, value_cache, decode=needs_grad)
    eager_cpu = query.device.type == "cpu" and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    with profiled("decode_attention", backend):
        if backend is Backend.TRITON:
            return fused.decode_attention(query, key_cache, value_cache, lengths, scale)
        T, max_len = query.size(2), key_cache.size(2)
        if eager_cpu:
            # on CPU reading the lengths costs nothing: attend over the slots in use only, and without a mask where
            # one new token per sequence sees all of them (every sequence as long): torch's fused kernel then
            # runs unmasked (measured ~2x less time per call at batch 1, half the cache in use)
            if in_use is None:
                counts = lengths.tolist()  # one operation (aminmax and two reads are three)
                in_use = min(counts), max(counts)
            shortest, longest = in_use
            max_len = min(max_len, max(longest, 1))  # one slot at least: an empty cache still gives zeros (masked)
            key_cache, value_cache = key_cache.narrow(2, 0, max_len), value_cache.narrow(2, 0, max_len)
            if T == 1 and 0 < shortest == longest:
                if backend is Backend.TORCH:  # what torch_sdpa does on CPU without a mask, minus its wrappers
                    return F.scaled_dot_product_attention(
                        query, key_cache, value_cache, scale=scale, enable_gqa=enable_gqa
                    )
                return DENSE[backend](query, key_cache, value_cache, None, 0.0, False, scale, enable_gqa)
        cols = torch.arange(max_len, device=query.device)
        last = lengths.to(query.device)[:, None, None, None] - T + torch.arange(T, device=query.device)[:, None]
        mask = cols <= last  # (B, 1, T, max_len): True = may attend
        return DENSE[backend](query, key_cache, value_cache, mask, 0.0, False, scale, enable_gqa)
