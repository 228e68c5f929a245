"""GPU numerics of the fused kernels (``pytest -m cuda``): every dtype, large shapes, the autotuner.

Skipped without CUDA; run them on a GPU machine. bfloat16 numerics are checked here only: the Triton
interpreter computes bfloat16 wrongly (TRITON-NOTES.md).
"""

from __future__ import annotations

import pytest
import torch
from attention_checks import compare_backend, random_qkv

from kernels import Backend

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run pytest -m cuda on one)"),
]


def _cuda(tensors):
    return {name: t.cuda() for name, t in tensors.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_large_shapes(dtype, head_dim, is_causal):
    compare_backend(Backend.TRITON, _cuda(random_qkv((2,), 8, 1024, 1024, head_dim)), dtype, is_causal=is_causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masks_gqa_and_odd_lengths(dtype):
    tensors = _cuda(random_qkv((3,), 8, 517, 1031, 80, kv_heads=2))
    keep = torch.rand(3, 1, 517, 1031, device="cuda") > 0.2
    compare_backend(Backend.TRITON, {**tensors, "attn_mask": keep}, dtype, enable_gqa=True)


def test_rows_with_nothing_to_attend_on_torch_cuda():
    """The TORCH backend's guard for empty rows, on CUDA where it is active."""
    tensors = _cuda(random_qkv((2,), 4, 64, 96, 64))
    keep = torch.rand(2, 1, 64, 96, device="cuda") > 0.5
    keep[:, :, 5] = False
    compare_backend(Backend.TORCH, {**tensors, "attn_mask": keep}, torch.float16)
