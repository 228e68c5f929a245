"""Keras-style ``get_config()`` / ``from_config()`` for every layer, and argument checks shared by them.

A config is a JSON-serialisable dict of constructor arguments: ``cls.from_config(layer.get_config())``
builds a new, freshly initialised layer of the same architecture (weights travel in ``state_dict``, as in
Keras). ``dtype`` is kept (as a string); ``device`` is not, as it is placement rather than architecture.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ArgumentError, ArgumentTypeError, RuntimeArgumentError

__all__ = ["ConfigMixin"]


class ConfigMixin:
    """``get_config`` returns the constructor arguments; ``from_config`` calls the constructor with them."""

    def get_config(self) -> dict[str, Any]:  # pragma: no cover - every layer overrides it
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """A new layer built from ``config`` (as returned by ``get_config``)."""
        if not isinstance(config, dict):
            raise TypeError(f"{cls.__name__}.from_config expects a dict, got {type(config).__name__}")
        kwargs = dict(config)
        if "dtype" in kwargs and kwargs["dtype"] is not None:
            kwargs["dtype"] = dtype_from_name(kwargs["dtype"])
        if "activation" in kwargs:
            kwargs["activation"] = activation_from_config(kwargs["activation"])
        return cls(**kwargs)


def dtype_name(module: torch.nn.Module) -> str | None:
    param = next(module.parameters(), None)
    return None if param is None else str(param.dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype; use e.g. 'float32' or 'bfloat16'")
    return dtype


def activation_to_config(activation: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """``"relu"``/``"gelu"`` for torch's two named activations, else the function's import path."""
    if activation is F.relu:
        return "relu"
    if activation is F.gelu:
        return "gelu"
    if isinstance(activation, torch.nn.Module):
        raise ValueError(
            f"activation {activation!r} is a module, which a config cannot hold; pass a function instead "
            "(e.g. torch.nn.functional.gelu or a function of your own defined at module level)"
        )
    module, name = getattr(activation, "__module__", None), getattr(activation, "__qualname__", "")
    if not module or "<" in name:
        raise ValueError(
            f"activation {activation!r} cannot be imported by name (a lambda or a nested function); "
            "define it at module level to make the layer's config serialisable"
        )
    return f"{module}.{name}"


def activation_from_config(value: Any) -> str | Callable[[torch.Tensor], torch.Tensor]:
    if not isinstance(value, str) or value in ("relu", "gelu"):
        return value
    module, _, name = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"activation {value!r} cannot be imported: {err}") from err


def check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ArgumentError(f"{name} must be a positive integer, got {value!r}")


def check_heads(embed_dim: object, num_heads: object, names: tuple[str, str] = ("embed_dim", "num_heads")) -> None:
    check_positive_int(embed_dim, names[0])
    check_positive_int(num_heads, names[1])
    if embed_dim % num_heads:
        divisors = [h for h in range(1, min(embed_dim, 64) + 1) if embed_dim % h == 0]
        raise ArgumentError(
            f"{names[0]}={embed_dim} is not divisible by {names[1]}={num_heads}; each head gets "
            f"{names[0]} / {names[1]} channels, so pick {names[1]} in {divisors} or change {names[0]}"
        )


def check_dropout(p: object, name: str = "dropout") -> None:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ArgumentError(f"{name} must be a probability in [0, 1], got {p!r}")


def check_activation(activation: object) -> None:
    if isinstance(activation, str):
        if activation not in ("relu", "gelu"):
            raise RuntimeArgumentError(
                f"activation must be 'relu', 'gelu' or a callable, got {activation!r}; "
                "pass e.g. torch.nn.functional.silu for another one"
            )
    elif not callable(activation):
        raise ArgumentTypeError(f"activation must be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
