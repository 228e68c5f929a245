"""Padded batches on a busy machine: the packed stacks run forward and backward on the threads other processes leave
free (`kernels._cpu_share.on_free_threads`), with the same numbers as on a quiet machine and torch's thread count
back afterwards."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import layers
from kernels import _cpu_share

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores: one thread is all it would use")


def _padded_step(model, busy: float, monkeypatch, **inputs):
    """A training step; returns the output, every parameter's gradient and the thread counts the feed-forward
    block's first linear layer saw in forward and backward."""
    monkeypatch.setattr(_cpu_share, "others_cores", lambda: busy)
    seen = []
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 48)
    handles = [
        linear.register_forward_hook(lambda m, a, out: seen.append(("forward", torch.get_num_threads()))),
        linear.register_full_backward_hook(lambda m, gi, go: seen.append(("backward", torch.get_num_threads()))),
    ]
    model.zero_grad()
    torch.manual_seed(3)
    out = model(**inputs)
    out.square().sum().backward()
    for h in handles:
        h.remove()
    return out.detach(), [p.grad.clone() for p in model.parameters()], seen


@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_busy_padded_training_equals_quiet_on_fewer_threads(monkeypatch, two_threads, which):
    torch.manual_seed(0)
    E, H = 16, 2
    if which == "encoder":
        model = layers.TransformerEncoder(layers.TransformerEncoderLayer(E, H, 48, dropout=0.0, batch_first=True), 2)
        x = torch.randn(3, 7, E)
        pad = torch.arange(7)[None] >= torch.tensor([7, 4, 2])[:, None]
        inputs = {"src": x, "src_key_padding_mask": pad}
    else:
        model = layers.TransformerDecoder(layers.TransformerDecoderLayer(E, H, 48, dropout=0.0, batch_first=True), 2)
        pad = torch.arange(5)[None] >= torch.tensor([5, 3, 1])[:, None]
        memory_pad = torch.arange(7)[None] >= torch.tensor([2, 7, 6])[:, None]
        inputs = {"tgt": torch.randn(3, 5, E), "memory": torch.randn(3, 7, E), "tgt_key_padding_mask": pad,
                  "memory_key_padding_mask": memory_pad}  # fmt: skip
    quiet_out, quiet_grads, quiet_seen = _padded_step(model, 0.0, monkeypatch, **inputs)
    busy_out, busy_grads, busy_seen = _padded_step(model, os.cpu_count() - 1.0, monkeypatch, **inputs)
    assert set(quiet_seen) == {("forward", 2), ("backward", 2)}
    assert set(busy_seen) == {("forward", 1), ("backward", 1)}
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(busy_out, quiet_out)
    for busy, quiet in zip(busy_grads, quiet_grads, strict=True):
        torch.testing.assert_close(busy, quiet)
