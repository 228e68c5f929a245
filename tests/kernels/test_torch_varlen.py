"""``TORCH`` on packed sequences runs torch's own ``varlen_attn`` where it serves the call (`kernels.torch_varlen`).

``varlen_attn`` is FlashAttention on CUDA only: here a stand-in with its signature and semantics (causality
through ``window_size=(-1, 0)``, aligned bottom-right) takes its place on CPU, so the plumbing is tested: which
calls go to it, with which arguments, gradients through it, the fallback when torch refuses. The real function is
tested against float64 in tests/kernels/test_cuda.py (``pytest -m cuda``).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import Backend, torch_varlen

LENGTHS = [5, 17, 1, 9]


@pytest.fixture
def calls(monkeypatch):
    """The stand-in's calls (their keyword arguments and lengths); it serves CPU tensors."""
    seen = []

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                    enable_gqa=False):  # fmt: skip
        assert cu_seq_q.dtype == cu_seq_k.dtype == torch.int32
        seen.append({"max_q": max_q, "max_k": max_k, "scale": scale, "window_size": window_size,
                     "enable_gqa": enable_gqa})  # fmt: skip
        outs = []
        cq, ck = cu_seq_q.tolist(), cu_seq_k.tolist()
        for b in range(len(cq) - 1):
            q, k, v = (t[s].transpose(0, 1).float() for t, s in ((query, slice(cq[b], cq[b + 1])),
                       (key, slice(ck[b], ck[b + 1])), (value, slice(ck[b], ck[b + 1]))))  # fmt: skip
            assert q.size(1) <= max_q and k.size(1) <= max_k
            keep = None
            if window_size == (-1, 0):  # bottom-right: query i sees keys j <= i + (Lk - Lq)
                rows, cols = torch.arange(q.size(1))[:, None], torch.arange(k.size(1))
                keep = cols <= rows + (k.size(1) - q.size(1))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale, enable_gqa=enable_gqa)
            outs.append(out.transpose(0, 1))
        return torch.cat(outs).to(query.dtype)

    monkeypatch.setattr(torch_varlen, "_function", lambda: (varlen_attn, frozenset(inspect.signature(varlen_attn)
                                                                                         .parameters)))  # fmt: skip
    monkeypatch.setattr(torch_varlen, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(torch_varlen, "_broken", [])
    return seen


def _packed(q_lens, k_lens=None, heads=4, kv_heads=2, dim=16, dtype=torch.bfloat16):
    k_lens = q_lens if k_lens is None else k_lens
    q = torch.randn(sum(q_lens), heads, dim, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(sum(k_lens), kv_heads, dim, dtype=dtype, requires_grad=True) for _ in range(2))

    def offsets(lens):
        return F.pad(torch.tensor(lens).cumsum(0), (1, 0))

    return q, k, v, offsets(q_lens), offsets(k_lens)


def _reference(q, k, v, cu_q, cu_k, is_causal):
    """float64, one sequence at a time (top-left causal: the package's contract)."""
    outs, cq, ck = [], cu_q.tolist(), cu_k.tolist()
    for b in range(len(cq) - 1):
        qs, ks, vs = (t[a:e].transpose(0, 1).double() for t, (a, e) in ((q, cq[b : b + 2]), (k, ck[b : b + 2]),
                      (v, ck[b : b + 2])))  # fmt: skip
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=is_causal, enable_gqa=True).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("is_causal", [False, True])
def test_served_calls_equal_the_float64_reference_forward_and_gradients(calls, is_causal):
    q, k, v, cu, _ = _packed(LENGTHS)
    with kernels.sdpa_kernel([Backend.TORCH]):
        out = kernels.varlen_attention(q, k, v, cu, cu, is_causal=is_causal, enable_gqa=True)
    assert calls == [{"max_q": 17, "max_k": 17, "scale": None, "window_size": (-1, 0) if is_causal else (-1, -1),
                      "enable_gqa": True}]  # fmt: skip
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _reference(*leaves, cu, cu, is_causal)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    for ours, theirs in zip((q, k, v), leaves, strict=True):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, atol=5e-2, rtol=5e-2)


def test_nested_inputs_go_to_it_and_torch_goes_first_where_it_serves(calls, monkeypatch):
    x = torch.nested.nested_tensor([torch.randn(n, 4, 16) for n in LENGTHS], layout=torch.jagged,
                                   dtype=torch.float16).transpose(1, 2)  # fmt: skip  # (B, H, j, E)
    out = kernels.scaled_dot_product_attention(x, x, x, is_causal=True)
    assert len(calls) == 1 and calls[0]["window_size"] == (-1, 0)
    for part, got in zip(x.unbind(), out.unbind(), strict=True):  # (H, n, E) each
        ref = F.scaled_dot_product_attention(part.double(), part.double(), part.double(), is_causal=True)
        torch.testing.assert_close(got.double(), ref, atol=5e-3, rtol=5e-3)
    # where TRITON comes first by default (CUDA), TORCH goes first for such a call, and explain says why
    for module in (kernels.dispatch, kernels.sdpa):
        monkeypatch.setattr(module, "default_order", lambda device: (Backend.TRITON, Backend.TORCH, Backend.MATH))
    why = kernels.explain(x, x, x, is_causal=True)
    assert why.backend is Backend.TORCH
    assert any("varlen_attn serves this call" in r for r in why.reasons[Backend.TRITON])
    q, k, v, cu, _ = _packed(LENGTHS, dtype=torch.float16)
    monkeypatch.setattr(kernels.triton, "varlen_attention", lambda *a, **kw: pytest.fail("TRITON ran"))
    kernels.varlen_attention(q, k, v, cu, cu, enable_gqa=True)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "case, why",
    [
        ("dropout", "has no dropout"),
        ("float32", "takes float16/bfloat16"),
        ("head dim 20", "multiples of 8"),
        ("band", "takes no mask"),
        ("causal, other key lengths", "aligns bottom-right"),
        ("a sequence without keys", "has no keys"),
    ],
)
def test_calls_it_cannot_serve_run_the_buckets(calls, case, why):
    q_lens, k_lens = LENGTHS, {"causal, other key lengths": [7, 17, 3, 9], "a sequence without keys": [5, 0, 1, 9]}
    q, k, v, cu_q, cu_k = _packed(q_lens, k_lens.get(case), dtype=torch.float32 if case == "float32" else
                                  torch.bfloat16, dim=20 if case == "head dim 20" else 16)  # fmt: skip
    options = {"enable_gqa": True, "is_causal": case.startswith("causal") or case == "dropout",
               "dropout_p": 0.3 if case == "dropout" else 0.0}  # fmt: skip
    if case == "band":
        options["attn_mask"] = kernels.sliding_window(None, None, 3, 0, lower_right=True)
    found = torch_varlen.reasons(q, k, v, options.get("attn_mask"), options["dropout_p"], None, True)
    found += torch_varlen.length_reasons(LENGTHS, k_lens.get(case, LENGTHS), options["is_causal"])
    assert any(why in r for r in found), found
    with kernels.sdpa_kernel([Backend.TORCH]):
        out = kernels.varlen_attention(q, k, v, cu_q, cu_k, **options)
    assert calls == [] and out.shape == q.shape and torch.isfinite(out).all()


def test_a_refusal_switches_it_off_with_a_warning(calls, monkeypatch):
    q, k, v, cu, _ = _packed(LENGTHS)
    with kernels.sdpa_kernel([Backend.TORCH]):
        expected = kernels.varlen_attention(q, k, v, cu, cu, enable_gqa=True)  # through the stand-in

    def refuses(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")

    monkeypatch.setattr(torch_varlen, "_function", lambda: (refuses, frozenset({"window_size", "enable_gqa"})))
    with kernels.sdpa_kernel([Backend.TORCH]), pytest.warns(RuntimeWarning, match="varlen_attn refused a call"):
        out = kernels.varlen_attention(q, k, v, cu, cu, enable_gqa=True)  # the buckets
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
    now = torch_varlen.reasons(q, k, v, None, 0.0, None, True)
    assert any("switched off after an error: FlashAttention" in r for r in now)


def test_not_while_tracing(calls, monkeypatch):
    """While torch.compile traces, no lengths are read: TORCH is not moved first (nor is the signature inspected)."""
    q, k, v, _, _ = _packed(LENGTHS)
    assert torch_varlen.first(q, k, v, None, 0.0, None, True) is not None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch_varlen, "_function", lambda: pytest.fail("inspected while tracing"))
    assert torch_varlen.first(q, k, v, None, 0.0, None, True) is None
