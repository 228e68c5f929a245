"""Checks of the arguments of `kernels.scaled_dot_product_attention`.

Every backend gets inputs that passed these checks, so a kernel never sees a shape it would
misread. Each message names the argument, the value received and how to fix it.
"""

from __future__ import annotations

import itertools
import math
import numbers

import torch

from .masks import Band, band_of

_NAMES = ("query", "key", "value")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def validate_sdpa_args(
    query: object,
    key: object,
    value: object,
    attn_mask: object,
    dropout_p: object,
    is_causal: object,
    scale: object,
    enable_gqa: object,
) -> None:
    """Raise ``TypeError``/``ValueError`` for arguments that F.sdpa's contract does not allow."""
    tensors = (query, key, value)
    for name, t in zip(_NAMES, tensors, strict=True):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)

    _check_scalars(dropout_p, is_causal, scale, enable_gqa)
    _check_dtypes_and_devices(query, key, value)
    if query.is_nested or key.is_nested or value.is_nested:
        _check_nested(query, key, value, attn_mask)
    else:
        _check_dense_shapes(query, key, value)
    _check_heads(query, key, value, bool(enable_gqa))
    if attn_mask is not None:
        if is_causal:
            raise ValueError(
                "attn_mask and is_causal=True were both given; pass one of them: fold the causal pattern "
                "into the mask (mask & torch.ones(L, S, dtype=torch.bool).tril()) and set is_causal=False"
            )
        band = band_of(attn_mask)
        if band is not None:
            _check_band(band, None if query.is_nested else (query.size(-2), key.size(-2)))
        else:
            _check_mask(attn_mask, query, key)


def _check_band(band: Band, lengths: tuple[int, int] | None) -> None:
    """A band mask: made for these lengths (dense), or for any length (variable length: per sequence)."""
    made_for = (band.L, band.S)
    if lengths is None:
        if made_for != (None, None):
            raise ValueError(
                f"the attn_mask ({band.describe()}) was made for lengths L={band.L}, S={band.S}, but the sequences "
                "have their own lengths; make it for any length, e.g. kernels.sliding_window(None, None, left=...)"
            )
    elif made_for != (None, None) and made_for != lengths:
        raise ValueError(
            f"the attn_mask ({band.describe()}) was made for L={band.L}, S={band.S} but query and key have "
            f"L={lengths[0]}, S={lengths[1]}; make it for these lengths"
        )


def validate_varlen_args(
    query: object,
    key: object,
    value: object,
    cu_seqlens_q: object,
    cu_seqlens_k: object,
    dropout_p: object,
    is_causal: object,
    scale: object,
    enable_gqa: object,
    attn_mask: object = None,
) -> tuple[list[int], list[int]] | None:
    """Checks of `kernels.varlen_attention`'s arguments, the offsets' values too except while compiling;
    returns the query and key lengths it read from them (None while compiling)."""
    for name, t in zip(_NAMES, (query, key, value), strict=True):
        if not isinstance(t, torch.Tensor) or t.is_nested:
            raise TypeError(f"{name} must be a dense torch.Tensor (T, H, E) of packed tokens, got {type(t).__name__}")
    assert isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)
    _check_scalars(dropout_p, is_causal, scale, enable_gqa)
    _check_dtypes_and_devices(query, key, value)
    for name, t in zip(_NAMES, (query, key, value), strict=True):
        if t.dim() != 3:
            raise ValueError(f"{name} must be packed tokens (T, H, E), got shape {_shape(t)}")
    if query.size(-1) != key.size(-1):
        raise ValueError(f"query and key must have the same head dim E, got {_shape(query)} and {_shape(key)}")
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"key {_shape(key)} and value {_shape(value)} must agree in every dimension but the last")
    hq, hk = query.size(1), key.size(1)
    if hq != hk and not enable_gqa:
        raise ValueError(
            f"query has {hq} heads but key/value have {hk}; pass enable_gqa=True for grouped-query attention"
        )
    if hq % hk:
        raise ValueError(f"enable_gqa=True needs the query heads ({hq}) to be a multiple of the key/value heads ({hk})")
    if attn_mask is not None:
        band = band_of(attn_mask)
        if band is None:
            raise TypeError(
                f"varlen_attention takes a band mask as attn_mask (kernels.sliding_window(None, None, ...)), got "
                f"{type(attn_mask).__name__}; a mask tensor has no single meaning over sequences of different lengths"
            )
        if is_causal:
            raise ValueError("attn_mask and is_causal=True were both given; pass one of them")
        _check_band(band, None)
    q_lens = _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", query)
    k_lens = _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", key)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q describes {cu_seqlens_q.numel() - 1} sequences but cu_seqlens_k {cu_seqlens_k.numel() - 1}"
        )
    return None if q_lens is None else (q_lens, k_lens)


def _check_cu_seqlens(offsets: object, name: str, tokens: torch.Tensor) -> list[int] | None:
    if not isinstance(offsets, torch.Tensor) or offsets.dtype.is_floating_point or offsets.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor of offsets (B + 1,), got {getattr(offsets, 'dtype', offsets)}"
        )
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"{name} must be 1-D offsets (B + 1,) starting at 0, got shape {_shape(offsets)}")
    if torch.compiler.is_compiling():
        return None  # reading the values would be a host sync and a graph break: traced code trusts them
    values = offsets.tolist()  # a host sync on CUDA
    if values[0] != 0 or values[-1] != tokens.size(0) or any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(
            f"{name} must rise from 0 to the token count {tokens.size(0)}, got {values[:6]}"
            f"{' ...' if len(values) > 6 else ''}; build it as pad(lengths.cumsum(0), (1, 0))"
        )
    return [b - a for a, b in itertools.pairwise(values)]


def _check_scalars(dropout_p: object, is_causal: object, scale: object, enable_gqa: object) -> None:
    usual = type(dropout_p) is float and 0.0 <= dropout_p < 1.0 and type(is_causal) is bool and type(enable_gqa) is bool
    if usual and (scale is None or (type(scale) is float and math.isfinite(scale))):
        return  # the usual call, checked without the abstract-class lookups below (a decoding step is ~1 ms)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float in [0, 1), got {type(dropout_p).__name__} {dropout_p!r}")
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(
            f"dropout_p must be in [0, 1), got {dropout_p}; use 0.0 to disable dropout "
            "(p = 1 would drop every attention weight)"
        )
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
        if not math.isfinite(float(scale)):
            raise ValueError(f"scale must be finite, got {scale}; pass None for the default 1/sqrt(E)")


def _check_dtypes_and_devices(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    if not query.dtype.is_floating_point:
        raise TypeError(f"query must have a floating-point dtype, got {query.dtype}; convert with query.float()")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but query has {query.dtype}; cast all three to one dtype, "
                f"e.g. {name}.to(query.dtype)"
            )
        if t.device != query.device:
            raise ValueError(
                f"{name} is on {t.device} but query is on {query.device}; move them to one device, "
                f"e.g. {name}.to(query.device)"
            )


def _check_dense_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    q, k, v = query.shape, key.shape, value.shape
    if len(q) >= 2 and len(k) == len(q) == len(v) and q[-1] == k[-1] and k[:-1] == v[:-1] and q[:-3] == k[:-3]:
        return  # every check below holds: the usual call, in a few comparisons (a decoding step is ~1 ms)
    for name, t in zip(_NAMES, (query, key, value), strict=True):
        if t.dim() < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions (..., L, E), got shape {_shape(t)}; "
                f"add a sequence dimension, e.g. {name}.unsqueeze(0)"
            )
    for name, t in (("key", key), ("value", value)):
        if t.dim() != query.dim():
            raise ValueError(
                f"{name} has {t.dim()} dimensions {_shape(t)} but query has {query.dim()} {_shape(query)}; "
                "give all three the same layout, e.g. (B, H, L, E)"
            )
    if query.size(-1) != key.size(-1):
        raise ValueError(
            f"query and key must have the same head dim E, got query {_shape(query)} (E={query.size(-1)}) "
            f"and key {_shape(key)} (E={key.size(-1)})"
        )
    if key.size(-2) != value.size(-2):
        raise ValueError(
            f"key and value must have the same length S, got key {_shape(key)} (S={key.size(-2)}) and "
            f"value {_shape(value)} (S={value.size(-2)})"
        )
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"key {_shape(key)} and value {_shape(value)} must agree in every dimension but the last")
    if query.shape[:-3] != key.shape[:-3]:
        raise ValueError(
            f"query {_shape(query)} and key {_shape(key)} must have the same batch dimensions "
            "(everything before (H, L, E)); expand or repeat them to match"
        )


def _check_nested(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: object) -> None:
    for name, t in zip(_NAMES, (query, key, value), strict=True):
        if not t.is_nested:
            raise ValueError(
                f"{name} is a dense tensor but another input is nested; pass query, key and value all as "
                "jagged nested tensors, or all dense"
            )
        if t.layout != torch.jagged:
            raise ValueError(
                f"{name} is a nested tensor with layout {t.layout}; only layout=torch.jagged is supported: "
                "build it with torch.nested.nested_tensor(tensors, layout=torch.jagged)"
            )
        if t.dim() != 4 or t._ragged_idx != 2:
            raise ValueError(
                f"nested {name} must have shape (B, H, j, E) with the ragged dim at 2, got {_shape(t)} with "
                f"the ragged dim at {t._ragged_idx}; a (B, j, H, E) tensor needs .transpose(1, 2)"
            )
        if t._lengths is not None:
            raise ValueError(
                f"nested {name} has holes (built with lengths, e.g. by torch.nested.narrow); "
                f"call {name}.contiguous() first"
            )
    if attn_mask is not None and band_of(attn_mask) is None:
        raise ValueError(
            "attn_mask: a mask tensor is not supported with nested inputs; use is_causal=True for causal attention, a "
            "band made for any length (kernels.sliding_window(None, None, ...)), or pad the batch to a dense tensor"
        )
    batch = query.size(0)
    for name, t in (("key", key), ("value", value)):
        if t.size(0) != batch:
            raise ValueError(f"nested {name} holds {t.size(0)} sequences but query holds {batch}")
    if query.size(-1) != key.size(-1):
        raise ValueError(f"query and key must have the same head dim E, got {query.size(-1)} and {key.size(-1)}")
    if key.size(1) != value.size(1):
        raise ValueError(f"key has {key.size(1)} heads but value has {value.size(1)}; they must match")
    if key.offsets() is not value.offsets() and not torch.equal(key.offsets(), value.offsets()):
        raise ValueError(
            "key and value must have the same sequence lengths, got key lengths "
            f"{key.offsets().diff().tolist()} and value lengths {value.offsets().diff().tolist()}"
        )


def _check_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, enable_gqa: bool) -> None:
    if query.dim() < 3:
        return
    hq, hk = query.size(-3), key.size(-3)
    if hq == hk:
        return
    if not enable_gqa:
        raise ValueError(
            f"query has {hq} heads but key/value have {hk}; pass enable_gqa=True for grouped-query "
            "attention, or give them the same number of heads"
        )
    if hq % hk != 0:
        raise ValueError(f"enable_gqa=True needs the query heads ({hq}) to be a multiple of the key/value heads ({hk})")


def _check_mask(attn_mask: object, query: torch.Tensor, key: torch.Tensor) -> None:
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
        raise TypeError(
            f"attn_mask has dtype {attn_mask.dtype} but query has {query.dtype}; pass a bool mask "
            "(True = may attend) or a float mask of the query's dtype, e.g. attn_mask.to(query.dtype)"
        )
    if attn_mask.device != query.device:
        raise ValueError(
            f"attn_mask is on {attn_mask.device} but query is on {query.device}; "
            "move it with attn_mask.to(query.device)"
        )
    target = (*query.shape[:-1], key.size(-2))
    if query.dim() >= 3:
        target = (*query.shape[:-3], max(query.size(-3), key.size(-3)), *target[-2:])
    try:
        fits = attn_mask.dim() <= len(target) and torch.broadcast_shapes(attn_mask.shape, target) == target
    except RuntimeError:
        fits = False
    if not fits:
        dims = ", ".join(str(s) for s in target)
        raise ValueError(
            f"attn_mask of shape {_shape(attn_mask)} does not broadcast to the attention scores ({dims}) = "
            "(..., H, L, S); use e.g. (L, S), (B, 1, 1, S) or (B, H, L, S)"
        )
