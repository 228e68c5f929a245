"""Saving and loading whole models with torch's default, weights-only ``torch.load``.

``torch.save(model)`` pickles the classes of every module; since torch 2.6, ``torch.load`` unpickles only
allow-listed classes by default ("Unsupported global: GLOBAL layers.encoder.TransformerEncoder"). That holds for
torch's own transformer classes too. `safe_globals` allow-lists this package's classes and the torch classes they
are built from, for one load:

```python
import io
import torch
import layers

model = layers.TransformerEncoder(layers.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
buffer = io.BytesIO()
torch.save(model, buffer)
buffer.seek(0)
with layers.safe_globals():
    loaded = torch.load(buffer)  # weights_only=True, torch's default
assert type(loaded) is layers.TransformerEncoder
```

A model of your own that holds these layers needs its own classes too: ``layers.safe_globals(MyModel)``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["safe_globals", "serializable_classes"]


def serializable_classes() -> list:
    """This package's layer classes and the torch classes and functions inside them."""
    from . import attention, causal, decoder, encoder, transformer

    ours = [
        attention.MultiheadAttention, causal.CausalSelfAttention, encoder.TransformerEncoderLayer,
        encoder.TransformerEncoder, decoder.TransformerDecoderLayer, decoder.TransformerDecoder,
        transformer.Transformer,
    ]  # fmt: skip
    torch_parts = [
        nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear, nn.LayerNorm, nn.Dropout, nn.ModuleList,
        nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.TransformerDecoderLayer,
        nn.TransformerDecoder, nn.Transformer, F.relu, F.gelu, collections.OrderedDict, set,
    ]  # fmt: skip
    return ours + torch_parts


@contextlib.contextmanager
def safe_globals(*extra) -> Iterator[None]:
    """Allow ``torch.load`` (weights-only) to rebuild this package's layers (and the classes in ``extra``)."""
    with torch.serialization.safe_globals([*serializable_classes(), *extra]):
        yield
