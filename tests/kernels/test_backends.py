"""Backend selection: sdpa_kernel restricts, nests, restores and is per thread; explain says why."""

from __future__ import annotations

import re
import threading

import pytest
import torch

import kernels
from kernels import Backend, NoBackendAvailableError, dispatch
from kernels.backends import enabled_backends


@pytest.fixture
def calls(monkeypatch):
    """Records which backend served each call (the real implementations still run)."""
    seen: list[Backend] = []
    for backend, fn in list(dispatch.DENSE.items()):

        def spy(*args, _fn=fn, _backend=backend, **kwargs):
            seen.append(_backend)
            return _fn(*args, **kwargs)

        monkeypatch.setitem(dispatch.DENSE, backend, spy)
    return seen


def qkv():
    return tuple(torch.randn(2, 3, 9, 8) for _ in range(3))


def test_default_on_cpu_is_torch(calls):
    kernels.scaled_dot_product_attention(*qkv())
    assert calls == [Backend.TORCH]


def test_sdpa_kernel_restricts_and_orders(calls):
    with kernels.sdpa_kernel([Backend.MATH, Backend.TORCH]):
        kernels.scaled_dot_product_attention(*qkv())
    with kernels.sdpa_kernel(["torch", "math"]):  # names work too
        kernels.scaled_dot_product_attention(*qkv())
    assert calls == [Backend.MATH, Backend.TORCH]


def test_nested_blocks_replace_and_restore(calls):
    with kernels.sdpa_kernel(Backend.MATH):
        with kernels.sdpa_kernel(Backend.TORCH):
            assert enabled_backends() == (Backend.TORCH,)
            kernels.scaled_dot_product_attention(*qkv())
        assert enabled_backends() == (Backend.MATH,)
        kernels.scaled_dot_product_attention(*qkv())
    assert enabled_backends() is None
    assert calls == [Backend.TORCH, Backend.MATH]


def test_restored_after_exception():
    with pytest.raises(KeyError), kernels.sdpa_kernel(Backend.MATH):
        raise KeyError("boom")
    assert enabled_backends() is None


def test_selection_is_per_thread():
    inside, release, seen = threading.Event(), threading.Event(), {}

    def worker():
        inside.wait()
        seen["other thread"] = enabled_backends()
        release.set()

    thread = threading.Thread(target=worker)
    thread.start()
    with kernels.sdpa_kernel(Backend.MATH):
        inside.set()
        release.wait(timeout=10)
        seen["this thread"] = enabled_backends()
    thread.join()
    assert seen == {"other thread": None, "this thread": (Backend.MATH,)}


def test_forcing_triton_where_it_cannot_run_lists_reasons():
    q, k, v = (t.double() for t in qkv())  # the kernels take float16, bfloat16 and float32
    with kernels.sdpa_kernel(Backend.TRITON), pytest.raises(NoBackendAvailableError) as err:
        kernels.scaled_dot_product_attention(q, k, v)
    message = str(err.value)
    assert "TRITON: " in message and "dtype torch.float64; the kernels take float16, bfloat16 and float32" in message
    assert "kernels.explain(q, k, v)" in message
    assert isinstance(err.value, RuntimeError)


def test_dropout_past_the_kernels_32_bit_offsets_goes_to_another_backend():
    """L x S >= 2^31 pairs per head with dropout: the kernels' Philox offsets would wrap (masks repeating), so TRITON
    declines with the reason, and only then (nothing is computed here: explain, and the refusal of a forced TRITON)."""
    L = 46_341  # L * L = 2,147,488,281 >= 2^31
    q = torch.randn(1, 1, L, 8)
    message = "dropout over L x S = 46341 x 46341 query-key pairs per head, >= 2^31"
    with kernels.sdpa_kernel([Backend.TRITON, Backend.TORCH]):
        why = kernels.explain(q, q, q, dropout_p=0.1)
        assert why.backend is Backend.TORCH and any(message in r for r in why.reasons[Backend.TRITON])
        no_dropout = kernels.explain(q, q, q)
        assert not any(message in r for r in no_dropout.reasons.get(Backend.TRITON, []))
        if kernels.triton.INTERPRETER:  # CPU tensors are TRITON's here: without dropout it serves the call
            assert no_dropout.backend is Backend.TRITON
        shorter = kernels.explain(q[:, :, : L - 1], q[:, :, : L - 1], q[:, :, : L - 1], dropout_p=0.1)
        assert not any(message[:30] in r for r in shorter.reasons.get(Backend.TRITON, []))
    with kernels.sdpa_kernel([Backend.TRITON]), pytest.raises(NoBackendAvailableError, match=re.escape(message)):
        kernels.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    # variable length: the longest sequences count (one of 46,341 tokens among short ones)
    packed = torch.randn(L + 7, 1, 8)
    cu = torch.tensor([0, 3, 3 + L, L + 7])
    with (
        kernels.sdpa_kernel([Backend.TRITON]),
        pytest.raises(
            NoBackendAvailableError,
            match=re.escape("x 46341 query-key pairs per head (the longest sequences), >= 2^31"),
        ),
    ):
        kernels.varlen_attention(packed, packed, packed, cu, cu, dropout_p=0.1)
    # nested: likewise, whether torch knows the longest sequence (built from a list) or not (from offsets)
    from_offsets = torch.nested.nested_tensor_from_jagged(packed, offsets=cu).transpose(1, 2)
    from_list = torch.nested.nested_tensor(list(from_offsets.unbind()), layout=torch.jagged)
    short = torch.nested.nested_tensor_from_jagged(packed[:99], offsets=torch.tensor([0, 3, 99])).transpose(1, 2)
    for x in (from_offsets, from_list):
        with kernels.sdpa_kernel([Backend.TRITON, Backend.TORCH]):
            why = kernels.explain(x, x, x, dropout_p=0.1)
            assert why.backend is Backend.TORCH, why
            assert any("46341 x 46341 query-key pairs per head (the longest" in r for r in why.reasons[Backend.TRITON])
            assert not any("2^31" in r for r in kernels.explain(x, x, x).reasons.get(Backend.TRITON, []))
            assert not any("2^31" in r for r in kernels.explain(short, short, short, dropout_p=0.1).reasons.get(
                Backend.TRITON, []))  # fmt: skip
        with kernels.sdpa_kernel([Backend.TRITON]), pytest.raises(NoBackendAvailableError, match="2\\^31"):
            kernels.scaled_dot_product_attention(x, x, x, dropout_p=0.1)


def test_triton_reasons():
    from kernels import triton as triton_backend

    q = torch.randn(1, 2, 4, 320)
    reasons = triton_backend.unavailable_reasons(q, value=q, attn_mask=torch.zeros(4, 4, requires_grad=True))
    assert f"head dim 320 > {triton_backend.MAX_HEAD_DIM}" in reasons
    assert "a float attn_mask that requires grad (the kernels do not compute its gradient)" in reasons
    if not triton_backend.INTERPRETER:
        assert any("CPU tensor and no Triton interpreter" in r for r in reasons)


def test_bad_selections():
    with pytest.raises(TypeError, match=re.escape("sdpa_kernel: unknown backend 'flash'; pass one or a list of")):
        kernels.sdpa_kernel(["flash"]).__enter__()
    with pytest.raises(ValueError, match="sdpa_kernel: got an empty list of backends"):
        kernels.sdpa_kernel([]).__enter__()
    assert enabled_backends() is None


def test_explain_default_cpu():
    q, k, v = qkv()
    why = kernels.explain(q, k, v, is_causal=True)
    assert why.backend is Backend.TORCH
    assert why.reasons[Backend.MATH] == ["could run, but TORCH comes first"]
    assert why.reasons[Backend.TRITON][0] == "not tried by default on cpu; select it with sdpa_kernel"
    assert "torch.nn.functional.scaled_dot_product_attention, which picks" in why.detail
    text = str(why)
    assert text.startswith("TORCH would run:") and "TRITON not used:" in text and "MATH not used:" in text


def test_explain_under_sdpa_kernel():
    q, k, v = (t.double() for t in qkv())
    with kernels.sdpa_kernel([Backend.TRITON, Backend.MATH]):
        why = kernels.explain(q, k, v)
    assert why.backend is Backend.MATH
    assert why.reasons[Backend.TORCH] == ["not enabled by sdpa_kernel(TRITON, MATH)"]
    assert any("dtype torch.float64" in r for r in why.reasons[Backend.TRITON])
    with kernels.sdpa_kernel(Backend.TRITON):
        nothing = kernels.explain(q, k, v)
    assert nothing.backend is None and str(nothing).startswith("no backend can run these inputs")


def test_explain_nested_counts_calls():
    """Short sequences share one padded call; a long one gets its own (the padding would cost more than a call)."""
    x = torch.nested.nested_tensor([torch.randn(n, 2, 8) for n in (3, 5, 3, 3)], layout=torch.jagged)
    x = x.transpose(1, 2)
    why = kernels.explain(x, x, x, is_causal=True)
    assert why.detail == "torch's dense SDPA on buckets of similar lengths: 1 call(s) for 4 sequences"
    y = torch.nested.nested_tensor([torch.randn(n, 2, 8) for n in (3, 200, 3, 3)], layout=torch.jagged)
    y = y.transpose(1, 2)
    assert (
        kernels.explain(y, y, y).detail == "torch's dense SDPA on buckets of similar lengths: 2 call(s) for 4 sequences"
    )
    assert kernels.explain(y, y, y, dropout_p=0.1).detail == (  # dropout: the masks packed sequences draw
        "torch's CPU math steps with kernels.dropout's masks (not torch's random stream) on buckets of similar "
        "lengths: 2 call(s) for 4 sequences"
    )


def test_explain_runs_nothing(calls):
    kernels.explain(*qkv())
    assert calls == []


def test_torch_compile_fullgraph():
    """The dispatcher traces without graph breaks on the TORCH backend (dense input)."""
    q, k, v = qkv()

    def f(q, k, v):
        return kernels.scaled_dot_product_attention(q, k, v, is_causal=True) * 2

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


def test_profiler_names_the_attention_and_its_backend():
    q, k, v = qkv()
    x = torch.nested.nested_tensor([torch.randn(n, 3, 8) for n in (2, 5)], layout=torch.jagged).transpose(1, 2)
    with torch.profiler.profile() as prof:
        kernels.scaled_dot_product_attention(q, k, v)
        with kernels.sdpa_kernel(Backend.MATH):
            kernels.scaled_dot_product_attention(x, x, x)
    names = {event.key for event in prof.key_averages()}
    assert {"fusedlayers::attention[TORCH]", "fusedlayers::nested_attention[MATH]"} <= names


def test_no_profiler_range_is_opened_while_no_profiler_records(monkeypatch):
    """Opening a range costs two dispatcher calls (tens of microseconds on CPU, a share of a decoding step), so it is
    skipped without a profiler; under one, every call still gets its range (the test above)."""
    opened = []
    real = torch.profiler.record_function
    monkeypatch.setattr(torch.profiler, "record_function", lambda name: opened.append(name) or real(name))
    q, k, v = qkv()
    kernels.scaled_dot_product_attention(q, k, v)
    kernels.decode_attention(q, k, v, torch.full((q.size(0),), k.size(-2)))
    assert opened == []
    with torch.profiler.profile():
        kernels.decode_attention(q, k, v, torch.full((q.size(0),), k.size(-2)))
    assert opened == ["fusedlayers::decode_attention[TORCH]"]
