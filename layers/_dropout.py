"""``Dropout``: ``torch.nn.Dropout`` with the same numbers, drawn in one pass on CPU in training.

On CPU ``F.dropout`` draws a float noise tensor with ``bernoulli_``, divides it by ``1 - p`` and multiplies: three
passes over the tensor and a float mask saved for backward. ``torch.native_dropout`` draws the same Bernoulli
numbers from the same generator into a bool mask and scales in one product: bitwise the same output and gradient
(tested), ~40% less time on a ``(2250, 1024)`` activation (measured once, 20 against 34 ms), a quarter of the
saved mask. On CUDA torch already takes its fused kernel; nested, in-place and evaluation calls go through
``F.dropout`` as before.

The layers of this package use it for their own dropout modules (the same attributes, ``state_dict``, hooks and
``repr`` as torch's: the class name shows as ``Dropout``); `layers.revert` makes them ``nn.Dropout`` again.

On the packed paths (padding skipped, nested inputs) the layers call their dropout modules through
`packed_dropout`, which on CPU draws the mask as `kernels.dropout` does (~3x less time forward and backward than
``native_dropout``): packed tokens cannot follow torch's random stream anyway (docs/decisions.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

from .attention import has_hooks

__all__ = ["Dropout", "packed_dropout", "swap_dropout"]


class Dropout(nn.Dropout):
    """``torch.nn.Dropout(p, inplace)``, faster on CPU in training (see the module); input and output any shape."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        one_pass = self.training and not self.inplace and 0.0 < self.p < 1.0
        if one_pass and input.device.type == "cpu" and not input.is_nested:
            return torch.native_dropout(input, self.p, True)[0]
        return F.dropout(input, self.p, self.training, self.inplace)

    def _get_name(self) -> str:
        return "Dropout"  # repr as torch's


def swap_dropout(module: nn.Module, ours: bool = True) -> None:
    """Make ``module``'s own ``nn.Dropout`` children (exactly that class) this package's `Dropout`, in place; with
    ``ours=False`` the reverse."""
    old, new = (nn.Dropout, Dropout) if ours else (Dropout, nn.Dropout)
    for child in module.children():
        if type(child) is old:
            child.__class__ = new


def packed_dropout(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's dropout module on packed tokens ``x`` (any shape): `kernels.dropout`'s cheaper mask where the
    module is a plain dropout in training without hooks (see the module), else the module called as usual."""
    plain = type(module) in (Dropout, nn.Dropout) and module.training and not module.inplace
    if plain and not has_hooks(module):
        return kernels.dropout(x, module.p)
    return module(x)
