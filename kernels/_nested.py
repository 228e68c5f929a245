"""Variable-length attention on packed sequences, one dense call per bucket of equal-length sequences.

Why not torch's own nested SDPA: on CPU it is ~15x slower than dense fused SDPA on the packed tokens
of each sequence, and it refuses ``is_causal`` (``python -m kernels.bench --nested``). Sequences of equal
(query, key) lengths are stacked into one dense call, so a batch of uniform lengths costs one call.

Packed layout: the ``T`` tokens of all sequences in batch order, ``(T, H, E)``, with offsets ``(B + 1,)``
(``cu_seqlens``). A jagged nested ``(B, H, j, E)`` tensor (ragged dim 2, as F.sdpa wants) stores exactly
that: ``values()`` is a ``(H, T, E)`` view of a ``(T, H, E)`` buffer.
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


def packed_attention(
    attend: DenseAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    q_lens: list[int],
    k_lens: list[int],
    *,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """Run ``attend`` (a dense F.sdpa-like function) on each bucket of packed sequences.

    Shapes: ``query (Tq, Hq, E)``, ``key (Tk, Hk, E)``, ``value (Tk, Hk, Ev)`` -> ``(Tq, Hq, Ev)``; sequence
    ``b`` has ``q_lens[b]`` query and ``k_lens[b]`` key tokens. A sequence with no keys gives zeros.
    """
    heads, head_dim_v = query.size(1), value.size(-1)
    # split() rather than slicing: its backward is one cat, where each slice's backward would write a
    # zero-filled gradient of the whole buffer.
    q_seqs, k_seqs, v_seqs = query.split(q_lens), key.split(k_lens), value.split(k_lens)  # (len, H, E) each

    outputs: list[torch.Tensor | None] = [None] * len(q_lens)
    for (lq, lk), members in buckets(q_lens, k_lens).items():
        if lk == 0 or lq == 0:  # nothing to attend to (or no rows): zeros, as a fully masked row gives
            for b in members:
                outputs[b] = query.new_zeros(lq, heads, head_dim_v)
            continue

        def gather(seqs: tuple[torch.Tensor, ...], members: list[int] = members) -> torch.Tensor:
            if len(members) == 1:
                return seqs[members[0]].transpose(0, 1).unsqueeze(0)  # (1, H, len, E), a view
            return torch.stack([seqs[b] for b in members]).transpose(1, 2)  # (n, H, len, E)

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
    return torch.cat(outputs)  # (Tq, Hq, Ev)
