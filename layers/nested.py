"""Nested (ragged) inputs of the layers: ``(N, j, E)`` nested tensors of either layout, and packed tokens.

A jagged nested tensor ``(N, j, E)`` stores the ``T`` tokens of its sequences back to back, ``values() (T, E)``,
with ``offsets() (N + 1,)``: the packed form the layers compute on. A strided nested tensor (the default layout of
``torch.nested.nested_tensor``) is converted to that form on the way in (differentiably) and the output is
converted back, so a strided tensor in gives a strided tensor out.
"""

from __future__ import annotations

import warnings

import torch

from .errors import ArgumentError

__all__ = ["as_jagged", "check_nested", "like", "wrap"]


def as_jagged(x: torch.Tensor) -> torch.Tensor:
    """A nested ``(N, j, E)`` tensor in the jagged layout (a strided one converted, keeping autograd)."""
    if x.layout == torch.jagged:
        return x
    with warnings.catch_warnings():  # torch: "the PyTorch API of nested tensors is in prototype stage"
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.as_nested_tensor(list(x.unbind()), layout=torch.jagged)


def like(out: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """A jagged ``out`` in the layout of ``original`` (strided nested in, strided nested out)."""
    if original.layout == torch.strided:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.nested.as_nested_tensor(list(out.unbind()), layout=torch.strided)
    return out


def wrap(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Packed tokens ``(T, E)`` and ``offsets (N + 1,)`` as a jagged nested tensor ``(N, j, E)`` (no copy)."""
    return torch.nested.nested_tensor_from_jagged(values, offsets=offsets)


def check_nested(name: str, t: torch.Tensor, features: int | None, batch_first: bool) -> None:
    """Clear errors for nested inputs the layers cannot take (never an internal error about nested sizes)."""
    if not batch_first:
        raise ArgumentError(
            f"{name} is a nested tensor, which needs batch_first=True (a nested tensor is (N, j, E)); "
            "construct the layer with batch_first=True"
        )
    if t.dim() != 3:
        raise ArgumentError(f"nested {name} must be (N, j, E) with 3 dimensions, got {t.dim()}")
    if features is not None and t.size(-1) != features:
        raise ArgumentError(f"nested {name} must have {features} features (the last dim), got {t.size(-1)}")
    if t.layout == torch.jagged and t._lengths is not None:
        raise ArgumentError(f"nested {name} has holes (made by narrow); call {name}.contiguous() first")
    if t.layout == torch.jagged and t._ragged_idx != 1:
        raise ArgumentError(f"nested {name} must be ragged in its second dimension (N, j, E)")
