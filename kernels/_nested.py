"""Attention over jagged nested tensors, one dense call per bucket of equal-length sequences.

Why not torch's own nested SDPA: on CPU it is ~16x slower than dense fused SDPA on the packed tokens
of each sequence, and it refuses ``is_causal`` (DESIGN.md has the measurements). Sequences of equal
(query, key) lengths are stacked into one dense call, so a batch of uniform lengths costs one call.

Layout: a nested ``(B, H, j, E)`` tensor (ragged dim 2, as F.sdpa wants) stores its tokens as a
``(H, T, E)`` view of a ``(T, H, E)`` buffer, ``T`` the total token count; sequence ``b`` is
``values[:, offsets[b]:offsets[b+1]]``. The output is built on the query's own offsets, so its ragged
dim is the query's (it can be added to tensors of the query's shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DenseAttention = Callable[..., torch.Tensor]


def buckets(q_lens: list[int], k_lens: list[int]) -> dict[tuple[int, int], list[int]]:
    """Batch indices grouped by (query length, key length), in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for b, lengths in enumerate(zip(q_lens, k_lens, strict=True)):
        groups.setdefault(lengths, []).append(b)
    return groups


def per_sequence_attention(
    attend: DenseAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """Run ``attend`` (a dense F.sdpa-like function) on each bucket of a jagged batch.

    Shapes: ``query (B, Hq, j, E)``, ``key (B, Hk, k, E)``, ``value (B, Hk, k, Ev)`` (jagged) ->
    ``(B, Hq, j, Ev)`` jagged, on the query's offsets. A sequence with no keys gives zeros.
    """
    q_vals, k_vals, v_vals = query.values(), key.values(), value.values()  # (H, T, E)
    q_lens = query.offsets().diff().tolist()  # a host sync on CUDA
    k_lens = key.offsets().diff().tolist()
    heads, head_dim_v = q_vals.size(0), v_vals.size(-1)
    # split() rather than slicing: its backward is one cat, where each slice's backward would write a
    # zero-filled gradient of the whole buffer.
    q_seqs, k_seqs, v_seqs = (
        q_vals.split(q_lens, dim=1),
        k_vals.split(k_lens, dim=1),
        v_vals.split(k_lens, dim=1),
    )

    outputs: list[torch.Tensor | None] = [None] * len(q_lens)
    for (lq, lk), members in buckets(q_lens, k_lens).items():
        if lk == 0 or lq == 0:  # nothing to attend to (or no rows): zeros, as a fully masked row gives
            for b in members:
                outputs[b] = q_vals.new_zeros(lq, heads, head_dim_v)
            continue

        def gather(seqs: tuple[torch.Tensor, ...], members: list[int] = members) -> torch.Tensor:
            if len(members) == 1:
                return seqs[members[0]].unsqueeze(0)  # (1, H, len, E), a view
            return torch.stack([seqs[b] for b in members])  # (n, H, len, E)

        out = attend(
            gather(q_seqs),
            gather(k_seqs),
            gather(v_seqs),
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )  # (n, Hq, lq, Ev)
        for i, b in enumerate(members):
            outputs[b] = out[i].transpose(0, 1)  # (lq, Hq, Ev)

    packed = torch.cat(outputs)  # (T, Hq, Ev)
    result = torch.nested.nested_tensor_from_jagged(packed, offsets=query.offsets())  # (B, j, Hq, Ev)
    return result.transpose(1, 2)  # (B, Hq, j, Ev)
