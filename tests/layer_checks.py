"""Shared checks for the drop-in layers: the same weights in ours and torch's, the same outputs and gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

RTOL = ATOL = 1e-5  # fp32, relative to the largest magnitude of the reference (DESIGN.md)


def twins(ours_cls: type, torch_cls: type, *args, **kwargs) -> tuple[nn.Module, nn.Module]:
    """Our layer and torch's, built from the same seed; asserts identical initialisation, then checks that
    ``load_state_dict(strict=True)`` works in both directions."""
    torch.manual_seed(1234)
    theirs = torch_cls(*args, **kwargs)
    torch.manual_seed(1234)
    ours = ours_cls(*args, **kwargs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b), "state_dict keys differ"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: initialisation differs from torch's"
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL * scale, msg=lambda m: f"{what}: {m}")


def run(
    module: nn.Module, inputs: dict[str, torch.Tensor | None], call: Callable[..., object], grad_seed: int = 0
) -> dict[str, torch.Tensor]:
    """``call(module, **leaves)`` forward and backward; returns outputs and gradients of inputs and parameters.

    Float inputs become fresh leaves (the same values for ours and torch's); the output (the first one of a
    tuple) is reduced against a random upstream gradient drawn from ``grad_seed``.
    """
    leaves = {
        name: t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
        for name, t in inputs.items()
    }
    module.zero_grad(set_to_none=True)
    result = call(module, **leaves)
    outputs = result if isinstance(result, tuple) else (result,)
    found = {f"out{i}": o for i, o in enumerate(outputs) if isinstance(o, torch.Tensor)}
    main = outputs[0]
    gen = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(main.shape, generator=gen, dtype=main.dtype)
    main.backward(grad)
    found = {k: v.detach() for k, v in found.items()}
    for name, t in leaves.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            found[f"grad {name}"] = t.grad if t.grad is not None else torch.zeros_like(t)
    for name, p in module.named_parameters():
        found[f"grad {name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    return found


def compare(ours: nn.Module, theirs: nn.Module, inputs: dict, call: Callable[..., object]) -> dict:
    a, b = run(ours, inputs, call), run(theirs, inputs, call)
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    for key in b:
        assert torch.isfinite(b[key]).all(), f"torch's {key} is not finite: the test input is degenerate"
        assert_close(a[key], b[key], key)
    return a
