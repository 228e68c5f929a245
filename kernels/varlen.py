"""``kernels.varlen_attention``: attention over packed variable-length sequences (``cu_seqlens`` offsets)."""

from __future__ import annotations

import torch

from . import torch_varlen
from . import triton as fused
from ._nested import packed_attention, padded_attention
from ._validate import validate_varlen_args
from .backends import Backend
from .dispatch import PACKED, profiled, select

__all__ = ["varlen_attention"]


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    attn_mask=None,
) -> torch.Tensor:
    """Attention over a batch of sequences stored back to back, without padding.

    Shapes (``T`` tokens of all sequences in batch order, ``B`` sequences)::

        query          (Tq, H,  E)
        key            (Tk, Hk, E)
        value          (Tk, Hk, Ev)
        cu_seqlens_q   (B + 1,) int   offsets: sequence b's queries are query[cu_seqlens_q[b]:cu_seqlens_q[b + 1]]
        cu_seqlens_k   (B + 1,) int   likewise for key and value
        returns        (Tq, H,  Ev)

    Each sequence attends to its own keys only; ``is_causal`` is top-left aligned per sequence, and a band mask
    (``attn_mask=kernels.sliding_window(None, None, left, right, lower_right)``) applies to each sequence with its
    own lengths (bottom-right aligned: what queries appended to a key/value cache need); a sequence
    with no keys gives zeros. The other arguments are those of `scaled_dot_product_attention`, and so is the
    backend choice (`sdpa_kernel`): this is what that function runs for jagged nested tensors, without the
    nested wrapper, for layers that already hold packed tokens.

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    lengths = torch.tensor([3, 5])
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))  # [0, 3, 8]
    q, k, v = (torch.randn(8, 4, 16) for _ in range(3))  # (T, H, E)
    out = kernels.varlen_attention(q, k, v, cu, cu, is_causal=True)
    first = kernels.scaled_dot_product_attention(
        q[:3].transpose(0, 1), k[:3].transpose(0, 1), v[:3].transpose(0, 1), is_causal=True
    )  # (H, L, E)
    torch.testing.assert_close(out[:3], first.transpose(0, 1))
    ```
    """
    lengths = validate_varlen_args(
        query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p, is_causal, scale, enable_gqa, attn_mask
    )  # read once (a host sync on CUDA), except while compiling
    longest = None if lengths is None else (max(lengths[0], default=0), max(lengths[1], default=0))
    first = torch_varlen.first(query, key, value, attn_mask, dropout_p, scale, enable_gqa)
    if first and lengths is not None and torch_varlen.length_reasons(*lengths, is_causal):
        first = None  # TORCH would run its buckets: no faster than TRITON
    backend, _ = select(query, key, value, varlen=True, dropout_p=dropout_p, longest=longest, torch_reason=first)
    options = {"dropout_p": dropout_p, "is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa}
    if attn_mask is not None:
        options["attn_mask"] = attn_mask
    with profiled("varlen_attention", backend):
        if backend is Backend.TRITON:  # one launch over the packed tokens, offsets read on the device
            return fused.varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k, **options)
        if lengths is None:  # traced: no host reads, so pad to the longest sequence
            return padded_attention(PACKED[backend], query, key, value, cu_seqlens_q, cu_seqlens_k, **options)
        if backend is Backend.TORCH:  # torch's own varlen_attn where it serves the call (CUDA)
            out = torch_varlen.attention(query, key, value, cu_seqlens_q, cu_seqlens_k, *lengths, **options)
            if out is not None:
                return out
        return packed_attention(PACKED[backend], query, key, value, *lengths, **options)
