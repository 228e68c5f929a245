"""The functional entry point: `scaled_dot_product_attention`, its dispatcher and `explain`."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from . import torch_varlen
from . import triton as fused
from ._nested import as_jagged, band_for, like, packed_attention, padded_attention, plan
from ._validate import validate_sdpa_args
from .backends import Backend, NoBackendAvailableError, default_order, enabled_backends
from .dispatch import DENSE, PACKED, profiled, select, unavailable_reasons
from .dropout_masks import fast_path
from .masks import band_of
from .preferences import torch_priority
from .reference import attention_probs, repeat_kv

__all__ = ["Explanation", "attention_with_weights", "explain", "scaled_dot_product_attention"]


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention with the signature and semantics of
    ``torch.nn.functional.scaled_dot_product_attention``, on dense or jagged nested tensors.

    Shapes (``B`` batch dims, ``H``/``Hk`` query/key heads, ``L``/``S`` query/key lengths,
    ``E``/``Ev`` head dims)::

        query      (..., H,  L, E)     dense, or (B, H,  j, E) jagged nested (ragged dim 2)
        key        (..., Hk, S, E)     dense, or (B, Hk, k, E) jagged nested
        value      (..., Hk, S, Ev)    dense, or (B, Hk, k, Ev) jagged nested
        attn_mask  broadcastable to (..., H, L, S); dense inputs only
        returns    (..., H,  L, Ev)    in the form of query (nested in, nested out, same offsets)

    ``attn_mask`` is bool (True = may attend) or float (added to the scores, the query's dtype).
    ``is_causal`` is top-left aligned: row ``i`` sees columns ``0..i`` (``torch.ones(L, S).tril()``);
    for nested inputs it applies to each sequence. A row that may attend to nothing returns 0, with zero
    gradients. ``dropout_p`` applies dropout to the attention weights (seeded by ``torch.manual_seed``).
    ``enable_gqa`` lets ``H`` be a multiple of ``Hk`` (grouped-query attention).

    The backend is the first of the enabled ones (see `kernels.sdpa_kernel`) that can serve the
    inputs; `explain` tells which one and why the others were skipped.

    Raises:
        TypeError, ValueError: for arguments outside that contract, naming the argument and the fix.
        NoBackendAvailableError: when no enabled backend can serve the inputs (with each one's reasons).

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    q = torch.randn(2, 8, 128, 64)  # (B, H, L, E)
    k = v = torch.randn(2, 2, 96, 64)  # (B, Hk, S, E): 2 key/value heads
    out = kernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.shape == (2, 8, 128, 64)

    # Nested: sequences of lengths 3 and 7, (B, j, H, E) transposed to (B, H, j, E).
    x = torch.nested.nested_tensor(
        [torch.randn(3, 4, 16), torch.randn(7, 4, 16)], layout=torch.jagged
    ).transpose(1, 2)
    y = kernels.scaled_dot_product_attention(x, x, x, is_causal=True)
    assert y.is_nested and y.size(1) == 4
    ```
    """
    original = query
    query, key, value = (as_jagged(t) for t in (query, key, value))  # strided nested: as jagged
    validate_sdpa_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    longest = _longest_nested(query, key, dropout_p)
    first = torch_varlen.first(query, key, value, attn_mask, dropout_p, scale, enable_gqa) if query.is_nested else None
    backend, _ = select(
        query, key, value, attn_mask, is_causal=is_causal, dropout_p=dropout_p, longest=longest, torch_reason=first
    )
    if not query.is_nested:
        with profiled("attention", backend):
            return DENSE[backend](query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    attend = PACKED[backend]  # dropout on CPU draws its own masks (kernels.dropout): no torch stream to follow
    q, k, v = (t.values().transpose(0, 1) for t in (query, key, value))  # (T, H, E) views of the buffers
    options = {"dropout_p": dropout_p, "is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa}
    if attn_mask is not None:  # a band (validated): it applies to each sequence
        options["attn_mask"] = attn_mask
    with profiled("nested_attention", backend):
        if backend is Backend.TRITON:  # one launch; the offsets stay on the device (no host sync)
            out = fused.varlen_attention(q, k, v, query.offsets(), key.offsets(), **options)
        elif torch.compiler.is_compiling():  # no host reads while tracing: pad to the longest sequence
            out = padded_attention(attend, q, k, v, query.offsets(), key.offsets(), **options)
        else:
            q_lens, k_lens = _lengths(query), _lengths(key)
            out = None
            if backend is Backend.TORCH:  # torch's own varlen_attn where it serves the call (CUDA)
                out = torch_varlen.attention(q, k, v, query.offsets(), key.offsets(), q_lens, k_lens, **options)
            if out is None:
                out = packed_attention(attend, q, k, v, q_lens, k_lens, **options)
    # On the query's own offsets, so the result's ragged dim is the query's: (B, j, H, Ev) -> (B, H, j, Ev)
    return like(torch.nested.nested_tensor_from_jagged(out, offsets=query.offsets()).transpose(1, 2), original)


def _lengths(t: torch.Tensor) -> list[int]:
    return t.offsets().diff().tolist()  # a host sync on CUDA


def _longest_nested(query: torch.Tensor, key: torch.Tensor, dropout_p: float) -> tuple[int, int] | None:
    """The longest query and key sequence of nested inputs, where dropout's limit per head could be reached (the
    fused kernels' dropout offsets are 32-bit within a sequence and head): only where the batches' token totals
    reach it is anything read (torch's cached maximum, else the offsets: one host sync, for a call of at least
    46k x 46k tokens). None for dense inputs, without dropout, and while ``torch.compile`` traces (no host reads;
    documented in decisions.md)."""
    if not query.is_nested or dropout_p == 0 or torch.compiler.is_compiling():
        return None
    totals = [t.values().size(1) for t in (query, key)]  # (H, T, E) buffers of (B, H, j, E)
    if totals[0] * totals[1] < fused.MAX_DROPOUT_PAIRS:
        return None

    def longest(t: torch.Tensor) -> int:
        cached = getattr(t, "_maybe_max_seqlen", None)  # torch's jagged tensors keep it where it is known
        return int(cached) if cached is not None else int(t.offsets().diff().max())

    return longest(query), longest(key)


def attention_with_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention that also returns its weights, for ``nn.MultiheadAttention(need_weights=True)``.

    Arguments and output as `scaled_dot_product_attention` (dense tensors only); the second result is the
    attention weights ``(..., H, L, S)`` after dropout, as ``nn.MultiheadAttention`` returns them, and the
    output is computed from exactly those weights. No fused kernel materialises the weights, so this is
    the explicit math path in the input dtype, with ``O(L * S)`` memory: pass ``need_weights=False`` to
    a layer for speed.

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    q, k, v = (torch.randn(2, 4, 10, 8) for _ in range(3))  # (B, H, L, E)
    out, weights = kernels.attention_with_weights(q, k, v, is_causal=True)
    assert weights.shape == (2, 4, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
    torch.testing.assert_close(out, kernels.scaled_dot_product_attention(q, k, v, is_causal=True))
    ```
    """
    validate_sdpa_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if query.is_nested:
        raise ValueError(
            "attention weights cannot be returned for nested inputs; call scaled_dot_product_attention "
            "(in a layer: pass need_weights=False)"
        )
    with profiled("attention_with_weights", Backend.MATH):
        weights = attention_probs(query, key, attn_mask, is_causal, scale, enable_gqa)  # (..., H, L, S)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        return weights @ repeat_kv(value, query, enable_gqa), weights


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What `explain` found.

    Attributes:
        backend: the backend that would run, or ``None`` when none can.
        reasons: for every other backend, why it was not used.
        detail: how the chosen backend would serve the call (e.g. which kernel torch picks).
        mask: the kind of mask (none, causal, a tensor and its shape, a band and its alignment).
    """

    backend: Backend | None
    reasons: dict[Backend, list[str]]
    detail: str
    mask: str = "none"

    def __str__(self) -> str:
        head = f"{self.backend.name} would run: {self.detail}" if self.backend else "no backend can run these inputs"
        lines = [head, f"  mask: {self.mask}"]
        return "\n".join(lines + [f"  {b.name} not used: " + "; ".join(r) for b, r in self.reasons.items()])


_TORCH_KERNELS = {0: "math", 1: "flash attention", 2: "memory-efficient attention", 3: "cuDNN attention"}


def explain(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Explanation:
    """Which backend `scaled_dot_product_attention` would use for these arguments, and why not the others.

    Takes the arguments of `scaled_dot_product_attention` (same shapes, same checks) and runs nothing.

    Example, run by the test suite:

    ```python
    import torch
    import kernels

    q = k = v = torch.randn(1, 2, 32, 16)  # (B, H, L, E)
    why = kernels.explain(q, k, v, is_causal=True)
    print(why)  # TORCH would run: ..., and a line per backend not used
    assert why.backend is kernels.Backend.TORCH
    assert kernels.Backend.TRITON in why.reasons
    ```
    """
    query, key, value = (as_jagged(t) for t in (query, key, value))
    validate_sdpa_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    enabled = enabled_backends()
    order = enabled or default_order(query.device.type)
    longest = _longest_nested(query, key, dropout_p)
    first = torch_varlen.first(query, key, value, attn_mask, dropout_p, scale, enable_gqa) if query.is_nested else None
    try:
        chosen, reasons = select(
            query, key, value, attn_mask, is_causal=is_causal, dropout_p=dropout_p, longest=longest, torch_reason=first
        )
    except NoBackendAvailableError:
        chosen = None
        reasons = {
            b: unavailable_reasons(b, query, key, value, attn_mask, dropout_p=dropout_p, longest=longest) for b in order
        }
    for backend in order:
        if backend is not chosen and backend not in reasons:
            reasons[backend] = [f"could run, but {chosen.name} comes first"] if chosen else []
    for backend in Backend:
        if backend in order:
            continue
        if enabled is not None:
            why = "not enabled by sdpa_kernel(" + ", ".join(b.name for b in enabled) + ")"
        else:
            why = f"not tried by default on {query.device.type}; select it with sdpa_kernel"
        reasons[backend] = [why, *unavailable_reasons(backend, query, key, value, attn_mask, dropout_p=dropout_p)]
    detail = _detail(chosen, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return Explanation(chosen, reasons, detail, _mask_kind(attn_mask, is_causal))


def _mask_kind(attn_mask: object, is_causal: bool) -> str:
    band = band_of(attn_mask)
    if band is not None:
        return band.describe()
    if isinstance(attn_mask, torch.Tensor):
        kind = "bool (True = may attend)" if attn_mask.dtype == torch.bool else f"additive {attn_mask.dtype}"
        return f"{kind} tensor of shape {tuple(attn_mask.shape)}"
    return "causal, top-left aligned" if is_causal else "none"


def _detail(
    backend: Backend | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> str:
    if backend is None:
        return ""
    if query.is_nested:
        if backend is Backend.TRITON:
            return f"the fused kernel's variable-length mode: one launch for {query.size(0)} sequences"
        n = len(
            plan(tuple(_lengths(query)), tuple(_lengths(key)), band_for(is_causal, attn_mask), query.device).buckets
        )
        how = "torch's dense SDPA" if backend is Backend.TORCH else "the reference attention"
        if backend is Backend.TORCH and dropout_p > 0 and fast_path(dropout_p, query.device):
            how = "torch's CPU math steps with kernels.dropout's masks (not torch's random stream)"
        return f"{how} on buckets of similar lengths: {n} call(s) for {query.size(0)} sequences"
    if backend is Backend.TORCH:
        priority = torch_priority(query, key, attn_mask, is_causal, dropout_p)  # as `dispatch.torch_sdpa` sets it
        try:  # a private torch function: if it moves, explain still answers
            with priority or contextlib.nullcontext():
                choice = torch._fused_sdp_choice(
                    query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
                )
            kernel = _TORCH_KERNELS.get(int(choice), f"backend {int(choice)}")
        except (AttributeError, RuntimeError, TypeError):
            kernel = "a kernel of its choice"
        first = ", tried first as the fastest measured on this card" if priority else ""
        return f"torch.nn.functional.scaled_dot_product_attention, which picks {kernel}{first}"
    if backend is Backend.MATH:
        return "kernels.reference.attention_reference, step by step in the input dtype"
    return "the fused Triton kernel"
