"""`kernels.dropout` and its masks (`kernels.dropout_masks`): the kept fraction in every one of the four 16-bit
numbers a 64-bit draw gives, exact scaling, reproducible draws, gradients through the same mask, torch's dropout where
the cheaper masks do not apply, and the packed sequences' attention with dropout against the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import kernels
from kernels.dropout_masks import dropout_attention, keep_mask
from kernels.reference import attention_reference


def within_sigmas(kept: torch.Tensor, p_keep: float, sigmas: float = 5.0) -> bool:
    n = kept.numel()
    return abs(kept.float().mean().item() - p_keep) < sigmas * math.sqrt(p_keep * (1 - p_keep) / n)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_kept_fraction_in_every_lane_and_exact_scale(p):
    """Each 64-bit draw gives four 16-bit numbers: every position among the four keeps 1 - p' (torch's default
    random_ range leaves the top bit of a draw 0, which would bias one of them)."""
    keep, scale = keep_mask((1013, 257), p)  # odd sizes: the last draw is only partly used
    dropped = round(p * 65536)
    assert scale == 65536 / (65536 - dropped) and abs(dropped / 65536 - p) <= 2**-17
    lanes = keep.flatten()[: keep.numel() // 4 * 4].view(-1, 4)
    for lane in range(4):
        assert within_sigmas(lanes[:, lane], 1 - dropped / 65536), f"lane {lane}: {lanes[:, lane].float().mean()}"


def test_masks_are_reproducible_and_fresh():
    torch.manual_seed(5)
    a, _ = keep_mask((64, 33), 0.2)
    b, _ = keep_mask((64, 33), 0.2)
    torch.manual_seed(5)
    again, _ = keep_mask((64, 33), 0.2)
    assert torch.equal(a, again) and not torch.equal(a, b)
    gen = torch.Generator().manual_seed(9)
    c, _ = keep_mask((64, 33), 0.2, generator=gen)
    gen.manual_seed(9)
    assert torch.equal(c, keep_mask((64, 33), 0.2, generator=gen)[0])


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_keep_mask_refuses_p_outside_0_1(p):
    with pytest.raises(ValueError, match=rf"keep_mask: p must be in \[0, 1\), got {p}"):
        keep_mask((4, 4), p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dropout_scales_the_kept_elements_and_their_gradients(dtype):
    # no zeros among the inputs (randn + 3 gave an exact 0 in bfloat16 for some seeds: -3 is representable)
    x = torch.rand(37, 53, dtype=dtype).add_(0.5).requires_grad_()
    grad = torch.randn(37, 53, dtype=dtype)
    torch.manual_seed(3)
    y = kernels.dropout(x, 0.25)
    torch.manual_seed(3)
    keep, scale = keep_mask((37, 53), 0.25)
    assert torch.equal(y != 0, keep) and 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(y, x.detach() * keep * scale)
    (gx,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(gx, grad * keep * scale)


def test_no_bernoulli_draw_on_the_cheaper_path():
    x = torch.randn(64, 128, requires_grad=True)
    with torch.profiler.profile() as prof:
        kernels.dropout(x, 0.1).sum().backward()
    names = {e.name for e in prof.events()}
    assert "aten::bernoulli_" not in names and "aten::random_" in names


def test_torchs_dropout_where_the_masks_do_not_apply():
    x = torch.randn(8, 16)
    assert kernels.dropout(x, 0.5, training=False) is x and kernels.dropout(x, 0.0) is x
    nested = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(5, 8)], layout=torch.jagged)
    torch.manual_seed(4)
    expected = nn.functional.dropout(nested, 0.5)
    torch.manual_seed(4)
    out = kernels.dropout(nested, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(out.unbind(), expected.unbind(), strict=True))
    torch.manual_seed(1)
    expected = nn.functional.dropout(x, 1.0)  # p = 1: all dropped (no infinite scale)
    assert torch.equal(kernels.dropout(x, 1.0), expected) and not expected.any()
    assert kernels.dropout(torch.empty(0, 5), 0.5).shape == (0, 5)
    with pytest.raises(RuntimeError, match="can't be cast"):  # an integer tensor: torch's own error
        kernels.dropout(torch.ones(4, 3, dtype=torch.long), 0.5)


@pytest.mark.parametrize("case", ["bool mask with an empty row, causal", "float mask with a -inf row", "gqa"])
def test_dropout_attention_equals_the_reference_with_its_mask(case):
    B, H, L, S, E = 2, 4, 9, 13, 8
    kv_heads = 2 if case == "gqa" else H
    q = torch.randn(B, H, L, E, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, kv_heads, S, E, dtype=torch.float64, requires_grad=True) for _ in range(2))
    kwargs = {"enable_gqa": case == "gqa"}
    dense_mask = None
    if case.startswith("bool"):
        mask = torch.rand(B, 1, L, S) > 0.3
        mask[1, 0, 4] = False  # row 4 of sequence 1 sees nothing
        kwargs.update(attn_mask=mask, is_causal=True)
        dense_mask = mask & torch.ones(L, S, dtype=torch.bool).tril()
    elif case.startswith("float"):
        mask = torch.randn(B, 1, L, S, dtype=torch.float64)
        mask[0, 0, 2] = float("-inf")
        kwargs.update(attn_mask=mask)
        dense_mask = mask
    torch.manual_seed(12)
    out = dropout_attention(q, k, v, dropout_p=0.3, **kwargs)
    torch.manual_seed(12)
    keep, scale = keep_mask((B, H, L, S), 0.3)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref = attention_reference(*ref_leaves, dense_mask, 1 - 1 / scale, enable_gqa=kwargs["enable_gqa"],
                              dropout_mask=keep)  # fmt: skip
    grad = torch.randn_like(ref)
    ours = (out, *torch.autograd.grad(out, (q, k, v), grad))
    theirs = (ref, *torch.autograd.grad(ref, ref_leaves, grad))
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
    if case.startswith("bool"):
        assert (out[1, :, 4] == 0).all() and (ours[1][1, :, 4] == 0).all()


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_refuses_p_outside_0_1_as_torch_does(p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        kernels.dropout(torch.randn(4, 4), p)
