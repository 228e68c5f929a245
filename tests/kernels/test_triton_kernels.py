"""The fused Triton kernels themselves (under the Triton interpreter without a GPU): odd shapes, head dims,
strides, the torch.library registration, and torch.compile."""

from __future__ import annotations

import pytest
import torch
from attention_checks import compare_backend, random_qkv, skip_if_unavailable

import kernels
from kernels import Backend

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torch._library")


def _skip_without_triton():
    skip_if_unavailable(Backend.TRITON, torch.empty(1, 1, 1))


# (batch dims, heads, L, S, E, Ev): L = 1, 17, 129; S != L; batch 3; heads 5.
ODD_SHAPES = [((3,), 5, 1, 17, 16, 16), ((3,), 5, 17, 129, 32, 32), ((1,), 2, 129, 33, 16, 24), ((2,), 1, 65, 1, 8, 8)]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_odd_shapes(shape, is_causal):
    batch, h, L, S, E, Ev = shape
    compare_backend(Backend.TRITON, random_qkv(batch, h, L, S, E, Ev), is_causal=is_causal)


@pytest.mark.parametrize("head_dim", [16, 24, 80, 96, 128, 192, 256])
def test_head_dims(head_dim):
    dtype = torch.float32 if head_dim <= 128 else torch.float16  # float32 stops at 128 (register spills)
    compare_backend(Backend.TRITON, random_qkv((1,), 2, 19, 23, head_dim), dtype, is_causal=True)


def test_head_dims_above_the_cap_say_why():
    from kernels import triton as triton_backend

    q = torch.randn(1, 2, 8, 320)
    assert f"head dim 320 > {triton_backend.MAX_HEAD_DIM}" in triton_backend.unavailable_reasons(q, q, q)


def test_fp16_masked_gqa():
    tensors = random_qkv((2,), 6, 21, 37, 64, kv_heads=2)
    keep = torch.rand(2, 1, 21, 37) > 0.3
    compare_backend(Backend.TRITON, {**tensors, "attn_mask": keep}, torch.float16, enable_gqa=True)


def test_expanded_upstream_gradient():
    """``out.sum().backward()`` hands the backward a stride-0 gradient: read through strides, not assumed."""
    _skip_without_triton()
    q, k, v = (torch.randn(2, 3, 9, 16, requires_grad=True) for _ in range(3))
    with kernels.sdpa_kernel(Backend.TRITON):
        kernels.scaled_dot_product_attention(q, k, v).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    for got, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-5)


def test_opcheck():
    """The custom ops pass torch.library.opcheck (schema, fake tensors, autograd registration)."""
    _skip_without_triton()
    from kernels.triton.ops import flash_attention_bwd, flash_attention_fwd

    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    keep = torch.rand(1, 2, 8, 8) > 0.2
    seed = torch.zeros(1, dtype=torch.int64)
    fwd_args = (q, k, v, keep, seed, 0.1, 0.25, -1, 0, False, False)
    torch.library.opcheck(flash_attention_fwd, fwd_args)
    out, lse = flash_attention_fwd(*fwd_args)
    bwd_args = (
        torch.randn_like(out),
        q.detach(),
        k.detach(),
        v.detach(),
        keep,
        seed,
        out.detach(),
        lse,
        0.1,
        0.25,
        -1,
        0,
        False,
        False,
    )
    # The backward op has no backward of its own (no double backward): its autograd checks do not apply.
    torch.library.opcheck(flash_attention_bwd, bwd_args, test_utils=("test_schema", "test_faketensor"))

    from kernels.triton.ops import flash_attention_varlen_fwd

    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    packed = [torch.randn(8, 2, 16, requires_grad=True) for _ in range(3)]
    torch.library.opcheck(flash_attention_varlen_fwd, (*packed, cu, cu, None, 0.0, 0.25, -1, 0, False, False))


def test_torch_compile_fullgraph_through_the_op():
    _skip_without_triton()
    q, k, v = (torch.randn(2, 2, 12, 16, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        with kernels.sdpa_kernel(Backend.TRITON):
            return kernels.scaled_dot_product_attention(q, k, v, is_causal=True)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    out.sum().backward()
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_varlen_compiles_once_for_every_set_of_lengths():
    """Sequence lengths are data: one graph, no graph break, no recompilation as lengths change."""
    skip_if_unavailable(Backend.TRITON, torch.empty(1, 1, 1), varlen=True)
    from torch._dynamo.utils import counters

    def attend(q, k, v, cu):
        return kernels.varlen_attention(q, k, v, cu, cu, is_causal=True)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager", dynamic=True)
    for lengths in ([3, 5], [7, 1, 4], [10, 2, 2, 9]):
        cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))
        q, k, v = (torch.randn(sum(lengths), 2, 16, requires_grad=True) for _ in range(3))
        with kernels.sdpa_kernel([Backend.TRITON]):
            out = compiled(q, k, v, cu)
        out.sum().backward()
        with kernels.sdpa_kernel([Backend.TORCH]):
            torch.testing.assert_close(out, attend(q, k, v, cu), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
