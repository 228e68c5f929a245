"""Padded batch <-> variable-length (packed) form, so layers can skip the padding.

A padded batch ``(B, L, E)`` with a key padding mask ``(B, L)`` (nn convention: True = padding) becomes
the ``T`` real tokens ``(T, E)`` in batch order plus offsets ``(B + 1,)``: exactly the storage of a jagged
nested tensor ``(B, j, E)``. Any padding pattern works (right, left, in the middle): the real tokens of a
sequence keep their order, which is all attention needs (positions live in the embeddings). A fully
padded sequence packs to length 0 and unpacks to zeros.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import torch

from .errors import ArgumentTypeError

__all__ = ["Packed", "pack_keep", "pack_padded", "skip_padding", "skipping_padding", "unpack_padded"]

# None: the default rule (`skipping_padding`); True/False: set by `skip_padding`
_SKIP_PADDING: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fusedlayers_skip_padding", default=None)


@contextlib.contextmanager
def skip_padding(enabled: bool) -> Iterator[None]:
    """Whether this package's encoder and decoder layers, stacks and ``Transformer`` run a padded batch on its real
    tokens (``True``) or compute over the whole padded batch with the key padding mask, as torch's layers do
    (``False``), for the calls inside the block. Either way padded positions return 0 and real positions the same
    numbers (up to rounding).

    **The default** (outside any block): on its real tokens on the CPU, over the padded batch elsewhere. The packed
    route saves the padding's work but costs host time per layer (packing, lengths read, more kernel launches): on
    the CPU it took 0.34-0.42 of torch's time in padded training, while on an H200 it made a small padded encoder
    slower than torch's (1.70x in training), where computing densely runs torch's own operations
    (docs/decisions.md). ``skip_padding(True)`` packs on a GPU too: measure both on your model and keep the faster.
    Per thread and task (a context variable).

    Example, run by the test suite:

    ```python
    import torch
    import layers

    enc = layers.TransformerEncoder(layers.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    x, pad = torch.randn(2, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        packed = enc(x, src_key_padding_mask=pad)
        with layers.skip_padding(False):
            dense = enc(x, src_key_padding_mask=pad)
    torch.testing.assert_close(dense, packed, atol=1e-5, rtol=1e-5)
    ```
    """
    if not isinstance(enabled, bool):
        raise ArgumentTypeError(f"skip_padding takes True or False, got {enabled!r}")
    token = _SKIP_PADDING.set(enabled)
    try:
        yield
    finally:
        _SKIP_PADDING.reset(token)


def skipping_padding(device: torch.device) -> bool:
    """Whether a padded batch on ``device`` runs on its real tokens here: as `skip_padding` set it, else only on
    the CPU (the default rule, see `skip_padding`)."""
    chosen = _SKIP_PADDING.get()
    return device.type == "cpu" if chosen is None else chosen


class Packed(NamedTuple):
    """Real tokens of a padded batch. ``values (T, E)``, ``offsets (B + 1,)``, ``keep (B, L)`` (True = real)."""

    values: torch.Tensor
    offsets: torch.Tensor
    keep: torch.Tensor

    def nested(self) -> torch.Tensor:
        """The same tokens as a jagged nested tensor ``(B, j, E)`` (shares storage with ``values``)."""
        return torch.nested.nested_tensor_from_jagged(self.values, offsets=self.offsets)


def _check(x: torch.Tensor, key_padding_mask: torch.Tensor, batch_first: bool) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected a padded batch of 3 dimensions, got shape {tuple(x.shape)}")
    if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
        raise TypeError(
            "key_padding_mask must be a bool tensor (True = padding), got "
            f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
        )
    batch, length = (x.size(0), x.size(1)) if batch_first else (x.size(1), x.size(0))
    if tuple(key_padding_mask.shape) != (batch, length):
        raise ValueError(
            f"key_padding_mask must have shape (N, L) = {(batch, length)} for an input of shape "
            f"{tuple(x.shape)} (batch_first={batch_first}), got {tuple(key_padding_mask.shape)}"
        )


def pack_padded(x: torch.Tensor, key_padding_mask: torch.Tensor, batch_first: bool = True) -> Packed:
    """Keep the real tokens of a padded batch.

    Args:
        x: ``(B, L, E)``, or ``(L, B, E)`` with ``batch_first=False``.
        key_padding_mask: ``(B, L)`` bool, True where ``x`` is padding (``nn.MultiheadAttention``'s convention).
        batch_first: the layout of ``x``.

    Returns:
        `Packed` (``values (T, E)``, ``offsets (B + 1,)``, ``keep (B, L)``); gradients flow to ``x``.

    Example, run by the test suite:

    ```python
    import torch
    from layers.packing import pack_padded, unpack_padded

    x = torch.randn(3, 5, 8)  # (B, L, E)
    pad = torch.tensor([[0, 0, 0, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    packed = pack_padded(x, pad)
    assert packed.values.shape == (7, 8) and packed.offsets.tolist() == [0, 3, 7, 7]
    y = unpack_padded(packed.values, packed.keep)
    torch.testing.assert_close(y, x.masked_fill(pad[..., None], 0.0))
    ```
    """
    _check(x, key_padding_mask, batch_first)
    return pack_keep(x, ~key_padding_mask, batch_first)


def pack_keep(x: torch.Tensor, keep: torch.Tensor, batch_first: bool = True) -> Packed:
    """`pack_padded` given the real tokens ``keep (B, L)`` (True = real) instead of the padding mask."""
    if not batch_first:
        x = x.transpose(0, 1)
    values = x[keep]  # (T, E), batch order
    offsets = torch.nn.functional.pad(keep.sum(dim=1).cumsum(0), (1, 0))
    return Packed(values, offsets, keep)


def unpack_padded(values: torch.Tensor, keep: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """Scatter packed tokens ``(T, E)`` back to a padded batch, zeros at the padding (differentiable)."""
    batch, length = keep.shape
    out = values.new_zeros(batch, length, values.size(-1)).index_put((keep,), values)  # (B, L, E)
    return out if batch_first else out.transpose(0, 1)
