"""`packed_dropout`: a layer's dropout module on packed tokens.

The layers keep torch's ``nn.Dropout`` modules (their draws, bitwise, on dense batches). On the packed paths (padding
skipped, nested inputs) they call them through `packed_dropout`, which on CPU draws the mask as `kernels.dropout`
does (one generator call per four elements, not one per element; measured ad hoc on a ``(1100, 1024)``
activation, forward and backward: ~3x less time than torch's dropout): packed tokens cannot follow torch's random
stream anyway (docs/decisions.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn

import kernels

from .attention import has_hooks

__all__ = ["packed_dropout"]


def packed_dropout(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's dropout module on packed tokens ``x`` (any shape): `kernels.dropout`'s cheaper mask where the
    module is a plain ``nn.Dropout`` in training without hooks (see the module), else the module called as usual."""
    plain = type(module) is nn.Dropout and module.training and not module.inplace
    if plain and not has_hooks(module):
        return kernels.dropout(x, module.p)
    return module(x)
