"""The packed path on a busy machine (`kernels._cpu_share`): fewer threads, the same numbers, the thread count
restored; unchanged on a quiet machine."""

from __future__ import annotations

import os

import pytest
import torch

import kernels
from kernels import _cpu_share

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores: one thread is all it would use")


def _others(monkeypatch, cores: float) -> None:
    monkeypatch.setattr(_cpu_share, "others_cores", lambda: cores)


def test_free_threads_leaves_the_busy_cores(monkeypatch, two_threads):
    cpus = os.cpu_count()
    _others(monkeypatch, 0.2)
    assert _cpu_share.free_threads() == 2
    _others(monkeypatch, cpus - 1.0)
    assert _cpu_share.free_threads() == 1
    _others(monkeypatch, cpus + 3.0)  # never below one thread
    assert _cpu_share.free_threads() == 1


def test_others_cores_from_two_samples(monkeypatch):
    """What other processes used between two samples: busy time less this process's, in cores; samples closer than
    `INTERVAL_S` reuse the last figure."""
    cpus = os.cpu_count()
    samples = iter([(0.0, 1000, 400, 100), (1.0, 2000, 1300, 300), (1.1, 2100, 1400, 300)])
    monkeypatch.setattr(_cpu_share, "_sample", lambda: next(samples))
    monkeypatch.setattr(_cpu_share, "_last", None)
    monkeypatch.setattr(_cpu_share, "_others_cores", 0.0)
    monkeypatch.setattr(_cpu_share.time, "monotonic", lambda: 0.0)
    assert _cpu_share.others_cores() == 0.0  # one sample: nothing to compare yet
    monkeypatch.setattr(_cpu_share.time, "monotonic", lambda: 1.0)
    assert _cpu_share.others_cores() == pytest.approx((900 - 200) / 1000 * cpus)
    monkeypatch.setattr(_cpu_share.time, "monotonic", lambda: 1.1)  # within INTERVAL_S: no new sample read
    assert _cpu_share.others_cores() == pytest.approx(0.7 * cpus) and next(samples)[0] == 1.1


def test_sample_reads_proc():
    sample = _cpu_share._sample()
    if sample is None:
        pytest.skip("no /proc/stat here (not Linux): the packed path then keeps torch's thread count")
    _, total, busy, own = sample
    assert 0 <= busy <= total and own >= 0


def test_forward_and_backward_run_on_the_free_threads(monkeypatch, two_threads):
    _others(monkeypatch, os.cpu_count() - 1.0)
    seen = []

    def run(a, b):
        seen.append(("forward", torch.get_num_threads()))
        out = a * b.sin()
        out.register_hook(lambda g: seen.append(("backward", torch.get_num_threads())))
        return out

    a, b = (torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = _cpu_share.on_free_threads(run, a, b)
    assert torch.get_num_threads() == 2
    torch.autograd.gradcheck(lambda x, y: _cpu_share.on_free_threads(run, x, y), (a, b))
    out.sum().backward()
    assert ("forward", 1) in seen and ("backward", 1) in seen
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(a.grad, b.sin())
    torch.testing.assert_close(b.grad, a.detach() * b.detach().cos())


def test_a_stack_on_data_runs_its_backward_on_the_free_threads_until_it_ends(monkeypatch, two_threads):
    """Inputs that need no gradient (data into a stack of layers): the parameters' backward is limited too, and the
    thread count is back when the backward ends."""
    _others(monkeypatch, os.cpu_count() - 1.0)
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    seen = []

    def run(x):
        out = x @ weight
        out.register_hook(lambda g: seen.append(torch.get_num_threads()))
        return out.tanh()

    x = torch.randn(4, 3, dtype=torch.float64)
    out = _cpu_share.on_free_threads(run, x)
    (out * 2).sum().backward()
    assert seen == [1] and torch.get_num_threads() == 2
    torch.testing.assert_close(weight.grad, x.T @ (2 * (1 - out.detach() ** 2)))


def test_no_grad_inputs_and_a_quiet_machine_take_the_plain_call(monkeypatch, two_threads):
    _others(monkeypatch, 0.0)
    x = torch.ones(2, requires_grad=True) * 2
    assert _cpu_share.on_free_threads(lambda t: t, x) is x  # no autograd node, no thread change: the call as it is
    _others(monkeypatch, os.cpu_count() - 1.0)
    seen = []
    _cpu_share.on_free_threads(lambda t: seen.append(torch.get_num_threads()) or t, torch.ones(2))
    assert seen == [1] and torch.get_num_threads() == 2


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_nested_attention_busy_equals_quiet(monkeypatch, two_threads, dropout_p):
    """A jagged batch through the variable-length path: outputs and every gradient equal on a busy machine."""
    lengths = [5, 1, 9, 4]
    parts = [torch.randn(n, 3, 8) for n in lengths]

    def run(busy: float):
        _others(monkeypatch, busy)
        leaves = [p.clone().requires_grad_() for p in parts]
        q = torch.nested.as_nested_tensor(leaves, layout=torch.jagged).transpose(1, 2)  # (B, H, j, E)
        torch.manual_seed(1)
        with kernels.sdpa_kernel([kernels.Backend.TORCH]):
            out = kernels.scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=dropout_p)
        values = out.transpose(1, 2).values()
        (values * torch.arange(values.numel()).view_as(values).sin()).sum().backward()
        return values.detach(), [t.grad for t in leaves]

    quiet_out, quiet_grads = run(0.0)
    busy_out, busy_grads = run(os.cpu_count() - 1.0)
    torch.testing.assert_close(busy_out, quiet_out)
    for busy, quiet in zip(busy_grads, quiet_grads, strict=True):
        torch.testing.assert_close(busy, quiet)
    assert torch.get_num_threads() == 2


def test_backward_twice_with_retain_graph_and_once_without(monkeypatch, two_threads):
    """As torch's own graphs: a retained graph backs up again; a freed one raises torch's error."""
    _others(monkeypatch, os.cpu_count() - 1.0)
    a = torch.randn(4, requires_grad=True)
    out = _cpu_share.on_free_threads(lambda t: t.exp(), a).sum()
    out.backward(retain_graph=True)
    out.backward()
    torch.testing.assert_close(a.grad, 2 * a.detach().exp())
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.backward()


def test_double_backward_and_a_raising_backward(monkeypatch, two_threads):
    """Second-order gradients are torch's; a backward that raises inside the call leaves no thread limit behind."""
    _others(monkeypatch, os.cpu_count() - 1.0)
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda x: _cpu_share.on_free_threads(lambda t: t.sin() * t, x), (a,))

    def run(t):
        out = t.exp()
        out.register_hook(lambda g: 1 / 0)
        return out

    with pytest.raises(ZeroDivisionError):
        _cpu_share.on_free_threads(run, a).sum().backward()
    assert torch.get_num_threads() == 1  # the failed backward never reached the call's inputs
    _cpu_share.on_free_threads(lambda t: t * 2, a)  # the next call lifts what the failed backward left set
    assert torch.get_num_threads() == 2
