"""Variable-length attention on packed sequences for the ``TORCH`` and ``MATH`` backends: a few dense calls over
buckets of similar lengths, with one gather in and one gather out.

Why not torch's own nested SDPA: on CPU it is ~15x slower than dense fused SDPA on the packed tokens of each
sequence, and it refuses ``is_causal`` (``python -m kernels.bench --nested``). Why buckets rather than one call
per distinct length: each call is a parallel region whose threads wait for each other; on a busy machine a
descheduled thread makes every one of many small calls slow (measured: `layers.bench`'s busy-machine case). So
sequences sorted by length are split into at most `MAX_BUCKETS` groups where a split saves more work than a call
costs (`plan`); each group is padded to its longest member and masked.

Packed layout: the ``T`` tokens of all sequences in batch order, ``(T, H, E)``, with offsets ``(B + 1,)``
(``cu_seqlens``). A jagged nested ``(B, H, j, E)`` tensor (ragged dim 2, as F.sdpa wants) stores exactly
that: ``values()`` is a ``(H, T, E)`` view of a ``(T, H, E)`` buffer.

While ``torch.compile`` traces, the lengths cannot be read (a data-dependent branch); `padded_attention` then
pads the whole batch to its longest sequence through torch's nested-to-padded conversion and gathers the real
rows back, shapes symbolic throughout.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._cpu_share import on_free_threads
from .masks import Band, band_of

DenseAttention = Callable[..., torch.Tensor]

MAX_BUCKETS = 6
# What one more dense call costs, in units of (query x key) pairs of padded work per head dim and head: about a
# 48 x 48 attention (measured on CPU: a call's fixed cost is ~30 us at ~80 GFLOP/s).
CALL_COST_PAIRS = 48 * 48


@dataclasses.dataclass(frozen=True)
class Bucket:
    members: tuple[int, ...]  # batch indices, in the bucket's order
    q_len: int  # padded query length
    k_len: int  # padded key length
    q_rows: slice  # rows of the gathered queries
    k_rows: slice  # rows of the gathered keys/values
    mask: torch.Tensor | None  # (n, 1, Lq or 1, Lk) bool, True = may attend; None: nothing padded
    causal: bool  # top-left causal with no mask tensor (no padding in the bucket)


@dataclasses.dataclass(frozen=True)
class Plan:
    buckets: tuple[Bucket, ...]
    q_index: torch.Tensor  # (sum n * Lq,) packed query row of each gathered row (padding: row 0)
    k_index: torch.Tensor
    out_index: torch.Tensor  # (Tq,) gathered row of each packed query token


def _split(order: list[int], q_lens: list[int], k_lens: list[int]) -> list[list[int]]:
    """Greedy: start from one group of the sequences sorted longest first; split the group whose best split saves
    the most padded work, while a split saves more than a call costs (and at most MAX_BUCKETS groups)."""

    def running_max(values: list[int]) -> list[int]:
        out, top = [], 0
        for v in values:
            top = max(top, v)
            out.append(top)
        return out

    groups = [order]
    while len(groups) < MAX_BUCKETS:
        best = None
        for gi, group in enumerate(groups):
            n = len(group)
            head_q, head_k = running_max([q_lens[b] for b in group]), running_max([k_lens[b] for b in group])
            tail_q = running_max([q_lens[b] for b in reversed(group)])[::-1]
            tail_k = running_max([k_lens[b] for b in reversed(group)])[::-1]
            whole = n * head_q[-1] * head_k[-1]  # padded (query x key) pairs of the group
            for cut in range(1, n):
                parts = cut * head_q[cut - 1] * head_k[cut - 1] + (n - cut) * tail_q[cut] * tail_k[cut]
                saving = whole - parts
                if saving > CALL_COST_PAIRS and (best is None or saving > best[0]):
                    best = (saving, gi, cut)
        if best is None:
            break
        _, gi, cut = best
        groups[gi : gi + 1] = [groups[gi][:cut], groups[gi][cut:]]
    return groups


def band_for(is_causal: bool, attn_mask: object) -> Band | None:
    """The band of a variable-length call: ``is_causal`` (top-left causal) or a band given as ``attn_mask``."""
    band = band_of(attn_mask)
    return Band(None, None, None, 0) if is_causal and band is None else band


def _band_keep(band: Band | None, lq: int, lk: int, q_len: int, k_len: int) -> torch.Tensor:
    """``(lq, lk)`` bool: the key columns a sequence of ``q_len``/``k_len`` tokens may see, padded to ``lq``/``lk``."""
    keep = (torch.arange(lk) < k_len)[None, :].expand(lq, lk)
    if band is not None:
        keep = keep & F.pad(band.materialize(q_len, k_len), (0, lk - k_len, 0, lq - q_len))
    return keep


def _needs_mask(band: Band | None, is_causal: bool, lq: int, lk: int, lens: list[tuple[int, int]]) -> bool:
    """Whether a bucket padded to ``lq`` x ``lk`` needs a mask tensor for its members' ``(q_len, k_len)``.

    Padded query rows need none: their outputs are never gathered back (nor their gradients). Padded keys need
    one, unless nothing real sees them: under top-left causality (square bucket) query ``i`` sees keys ``j <= i``,
    all real where a sequence has at least as many keys as queries (self-attention). Without a mask tensor torch's
    kernels skip the blocks above the diagonal; with one they compute the whole square (a padded causal bucket
    took twice the attention time)."""
    if band is None:
        return any(k_len != lk for _, k_len in lens)
    if is_causal and lq == lk:
        return any(q_len > k_len for q_len, k_len in lens)
    return True


@functools.lru_cache(maxsize=64)
def plan(q_lens: tuple[int, ...], k_lens: tuple[int, ...], band: Band | None, device: torch.device) -> Plan:
    """The buckets of a batch, its gather indices and masks (cached: every layer of a model sees the same lengths).
    ``band`` applies to each sequence with its own lengths."""
    is_causal = band is not None and band.is_causal_upper_left()
    order = sorted((b for b in range(len(q_lens)) if q_lens[b] > 0), key=lambda b: (-k_lens[b], -q_lens[b]))
    q_starts = [0]
    k_starts = [0]
    for lq, lk in zip(q_lens, k_lens, strict=True):
        q_starts.append(q_starts[-1] + lq)
        k_starts.append(k_starts[-1] + lk)
    buckets, q_index, k_index = [], [], []
    out_index = [0] * q_starts[-1]
    for group in _split(order, list(q_lens), list(k_lens)) if order else []:
        lq, lk = max(q_lens[b] for b in group), max(k_lens[b] for b in group)
        q0, k0 = len(q_index), len(k_index)
        for i, b in enumerate(group):
            rows = range(q_starts[b], q_starts[b + 1])
            q_index += [*rows, *([0] * (lq - q_lens[b]))]
            k_index += [*range(k_starts[b], k_starts[b + 1]), *([0] * (lk - k_lens[b]))]
            for j, row in enumerate(rows):
                out_index[row] = q0 + i * lq + j
        mask = None
        if _needs_mask(band, is_causal, lq, lk, [(q_lens[b], k_lens[b]) for b in group]):
            mask = torch.stack([_band_keep(band, lq, lk, q_lens[b], k_lens[b]) for b in group])[:, None].to(device)
        bucket = Bucket(tuple(group), lq, lk, slice(q0, len(q_index)), slice(k0, len(k_index)), mask, is_causal)
        buckets.append(dataclasses.replace(bucket, causal=is_causal and mask is None))
    as_index = functools.partial(torch.tensor, dtype=torch.long, device=device)
    return Plan(tuple(buckets), as_index(q_index), as_index(k_index), as_index(out_index))


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
    attn_mask: Band | None = None,
) -> torch.Tensor:
    """Run ``attend`` (a dense F.sdpa-like function) on the buckets of packed sequences.

    Shapes: ``query (Tq, Hq, E)``, ``key (Tk, Hk, E)``, ``value (Tk, Hk, Ev)`` -> ``(Tq, Hq, Ev)``; sequence
    ``b`` has ``q_lens[b]`` query and ``k_lens[b]`` key tokens. A sequence with no keys gives zeros. A band mask
    (``attn_mask``) applies to each sequence with its own lengths.
    """
    if query.size(0) == 0:
        return query.new_zeros(0, query.size(1), value.size(-1))
    p = plan(tuple(q_lens), tuple(k_lens), band_for(is_causal, attn_mask), query.device)
    options = {"dropout_p": dropout_p, "scale": scale, "enable_gqa": enable_gqa}
    # many small parallel operations: on as many threads as other processes leave cores free (_cpu_share)
    return on_free_threads(functools.partial(_run_plan, attend, p, options), query, key, value)


def _run_plan(attend: DenseAttention, p: Plan, options: dict, query, key, value) -> torch.Tensor:
    q_all = query.index_select(0, p.q_index)  # (sum n * Lq, H, E): one gather per operand
    k_all, v_all = key.index_select(0, p.k_index), value.index_select(0, p.k_index)
    outputs = []
    for b in p.buckets:

        def dense(t: torch.Tensor, rows: slice, length: int, n: int = len(b.members)) -> torch.Tensor:
            return t[rows].unflatten(0, (n, length)).transpose(1, 2)  # (n, H, L, E), a view

        out = attend(
            dense(q_all, b.q_rows, b.q_len), dense(k_all, b.k_rows, b.k_len), dense(v_all, b.k_rows, b.k_len),
            attn_mask=b.mask, is_causal=b.causal, **options,
        )  # fmt: skip  # (n, H, Lq, Ev)
        outputs.append(out.transpose(1, 2).flatten(0, 1))  # (n * Lq, H, Ev)
    gathered = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return gathered.index_select(0, p.out_index)  # (Tq, H, Ev)


def padded_attention(
    attend: DenseAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    *,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    attn_mask: Band | None = None,
) -> torch.Tensor:
    """`packed_attention` without reading the lengths on the host, for ``torch.compile``: the batch padded to
    its longest sequence (torch's nested-to-padded conversion), one masked dense call, the real rows gathered
    back. Same contract; more work where lengths differ a lot."""

    def padded(t: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:  # (T, H, E) -> (B, Lmax, H, E)
        nested = torch.nested.nested_tensor_from_jagged(t.flatten(1), offsets=cu)
        return torch.nested.to_padded_tensor(nested, 0.0).unflatten(-1, t.shape[1:])

    q, k, v = padded(query, cu_q), padded(key, cu_k), padded(value, cu_k)  # (B, L, H, E)
    k_lens = (cu_k[1:] - cu_k[:-1])[:, None, None, None]  # (B, 1, 1, 1)
    cols = torch.arange(k.size(1), device=k.device)
    mask = cols < k_lens  # (B, 1, 1, Lk)
    band = band_for(is_causal, attn_mask)
    if band is not None:  # per sequence: the diagonal's shift is that sequence's S - L
        rows = torch.arange(q.size(1), device=q.device)[:, None]
        shift = (k_lens - (cu_q[1:] - cu_q[:-1])[:, None, None, None]) if band.lower_right else 0
        rel = cols - rows - shift  # (B, 1, Lq, Lk)
        if band.right is not None:
            mask = mask & (rel <= band.right)
        if band.left is not None:
            mask = mask & (rel >= -band.left)
    out = attend(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, dropout_p=dropout_p, is_causal=False, scale=scale, enable_gqa=enable_gqa,
    ).transpose(1, 2)  # fmt: skip  # (B, Lq, H, Ev)
    tokens = torch.arange(query.size(0), device=query.device)
    batch = torch.searchsorted(cu_q[1:], tokens, right=True)  # sequence of each packed token
    return out[batch, tokens - cu_q[batch]]  # (Tq, H, Ev)


def as_jagged(t: torch.Tensor) -> torch.Tensor:
    """A strided nested ``(B, H, j, E)`` tensor as a jagged one (differentiable); anything else unchanged."""
    if not isinstance(t, torch.Tensor) or not t.is_nested or t.layout == torch.jagged:
        return t  # validation reports anything that is not a tensor
    parts = [part.transpose(0, 1) for part in t.unbind()]  # (L_i, H, E) each
    return torch.nested.as_nested_tensor(parts, layout=torch.jagged).transpose(1, 2)


def like(out: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``out`` (jagged, ``(B, H, j, E)``) in the layout of ``original``: strided nested in, strided nested out."""
    if isinstance(original, torch.Tensor) and original.is_nested and original.layout == torch.strided:
        return torch.nested.as_nested_tensor(list(out.unbind()), layout=torch.strided)
    return out
