"""Dense inputs: every backend against torch's SDPA and the float64 reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attention_checks import CPU_BACKENDS, compare_backend, forward_backward, only, random_qkv

import kernels
from kernels import Backend
from kernels.dispatch import torch_sdpa

pytestmark = pytest.mark.parametrize("backend", CPU_BACKENDS)

# (batch dims, heads, L, S, E, Ev): odd sizes, L != S, a single token, an extra batch dim.
SHAPES = [
    ((2,), 3, 17, 17, 16, 16),
    ((1,), 1, 1, 1, 8, 8),
    ((3,), 5, 33, 65, 24, 40),
    ((2,), 2, 129, 7, 32, 16),
    ((2, 3), 2, 9, 11, 8, 8),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_mask(backend, shape, dtype):
    batch, h, L, S, E, Ev = shape
    compare_backend(backend, random_qkv(batch, h, L, S, E, Ev), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("is_causal", [False, True])
def test_half_precision(backend, dtype, is_causal):
    compare_backend(backend, random_qkv((2,), 3, 37, 45, 32), dtype, is_causal=is_causal)


@pytest.mark.parametrize("rank", [2, 3])
def test_low_rank_inputs(backend, rank):
    tensors = random_qkv((), 0, 13, 21, 8) if rank == 2 else random_qkv((3,), 0, 13, 21, 8)
    compare_backend(backend, tensors)


# Mask shapes broadcastable to (B=2, H=3, L=11, S=19).
MASK_SHAPES = [(11, 19), (19,), (2, 1, 1, 19), (2, 3, 11, 19), (1, 3, 1, 19), (2, 1, 11, 19), (3, 11, 19)]


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks(backend, mask_shape, kind):
    tensors = random_qkv((2,), 3, 11, 19, 16)
    if kind == "bool":
        mask = torch.rand(mask_shape) > 0.3
        mask[..., 0] = True  # every row keeps a column: empty rows have their own test
    else:
        mask = torch.randn(mask_shape, dtype=torch.float64)  # cast per dtype; its gradient is compared
    ours = compare_backend(backend, {**tensors, "attn_mask": mask})
    # the mask's gradient is compared too, except on TRITON, which refuses a mask that requires grad
    assert ("grad_attn_mask" in ours) == (kind == "float" and backend is not Backend.TRITON)


@pytest.mark.parametrize("q_len,k_len", [(5, 12), (12, 5), (9, 9), (1, 7), (7, 1)])
def test_causal_top_left(backend, q_len, k_len):
    compare_backend(backend, random_qkv((2,), 2, q_len, k_len, 16), is_causal=True)


def test_causal_is_top_left_tril(backend):
    """is_causal equals the explicit top-left mask tril(ones(L, S)), also when L > S."""
    tensors = random_qkv((2,), 2, 10, 4, 8)
    q, k, v = (t.float() for t in tensors.values())
    tril = torch.ones(10, 4, dtype=torch.bool).tril()
    with only(backend):
        causal = kernels.scaled_dot_product_attention(q, k, v, is_causal=True)
        masked = kernels.scaled_dot_product_attention(q, k, v, attn_mask=tril)
    torch.testing.assert_close(causal, masked)


@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_scale(backend, scale):
    compare_backend(backend, random_qkv((2,), 3, 15, 23, 16), scale=scale)


@pytest.mark.parametrize("kv_heads", [1, 2, 3])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gqa(backend, kv_heads, is_causal):
    compare_backend(backend, random_qkv((2,), 6, 14, 19, 16, kv_heads=kv_heads), enable_gqa=True, is_causal=is_causal)


def test_non_contiguous_inputs(backend):
    """(B, L, H, E) tensors transposed to (B, H, L, E), as attention layers produce them."""
    B, L, S, H, E = 2, 9, 7, 5, 16
    tensors = {
        "query": torch.randn(B, L, H, E, dtype=torch.float64).transpose(1, 2),
        "key": torch.randn(B, S, H, E, dtype=torch.float64).transpose(1, 2),
        "value": torch.randn(B, S, H, E, dtype=torch.float64).transpose(1, 2),
    }
    assert not tensors["query"].is_contiguous()
    compare_backend(backend, tensors)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_rows_with_nothing_to_attend_give_zero(backend, kind):
    tensors = random_qkv((2,), 3, 8, 10, 16)
    keep = torch.rand(2, 1, 8, 10) > 0.3
    keep[..., 0] = True
    keep[0, :, 2] = False  # row 2 of batch 0 may attend to nothing
    keep[1, :, 5] = False
    mask = keep if kind == "bool" else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, -torch.inf)
    with only(backend):
        ours = forward_backward(
            kernels.scaled_dot_product_attention,
            {**tensors, "attn_mask": mask},
            torch.randn(2, 3, 8, 16),
            torch.float32,
            mask_grad=backend is not Backend.TRITON,
        )
    for name, t in ours.items():
        assert torch.isfinite(t).all(), f"{name} has NaN/inf"
    for b, row in ((0, 2), (1, 5)):
        assert (ours["out"][b, :, row] == 0).all()
        assert (ours["grad_query"][b, :, row] == 0).all()
    # every other row still matches the reference (NaN-free comparison of the whole result)
    compare_backend(backend, {**tensors, "attn_mask": mask})


def test_empty_row_guard(backend):
    """The TORCH backend's guard for empty rows (used off CPU) gives torch's CPU numbers."""
    if backend is not Backend.TORCH:
        pytest.skip("the guard belongs to Backend.TORCH")
    tensors = random_qkv((2,), 3, 8, 10, 16)
    keep = torch.rand(2, 3, 8, 10) > 0.5
    keep[:, :, 3] = False
    for mask in (keep, torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, -torch.inf)):
        grad = torch.randn(2, 3, 8, 16)
        guarded = forward_backward(_guarded, {**tensors, "attn_mask": mask}, grad, torch.float32)
        plain = forward_backward(F.scaled_dot_product_attention, {**tensors, "attn_mask": mask}, grad, torch.float32)
        assert guarded.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(guarded[name], plain[name])


def _guarded(*args, **kwargs):
    return torch_sdpa(*args, guard_empty_rows=True, **kwargs)
