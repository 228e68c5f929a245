"""The slot of ``Backend.TRITON``: the repository's fused Triton kernels.

The kernels themselves land with the fused-kernel issue; until then this module reports, for
`kernels.explain` and for the dispatcher, why the backend cannot serve a call.
``triton`` is imported only inside ``kernels/`` and only when present, so the package imports on
machines without it (macOS, Windows) and every layer runs on ``Backend.TORCH`` there.
"""

from __future__ import annotations

import importlib.util
import os

import torch

# Read once: the Triton interpreter is chosen when @triton.jit decorates, i.e. at import time.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
KERNELS_BUILT = False  # flips when the fused kernels exist


def unavailable_reasons(query: torch.Tensor) -> list[str]:
    """Why the fused Triton kernels cannot serve ``query`` (empty when they can)."""
    reasons = []
    if not KERNELS_BUILT:
        reasons.append("the fused Triton kernels are not part of this version yet")
    if not TRITON_INSTALLED:
        reasons.append("triton is not installed (it has wheels for Linux only)")
    if query.device.type == "cpu" and not INTERPRETER:
        reasons.append("CPU tensor and no Triton interpreter (set TRITON_INTERPRET=1 before importing kernels)")
    elif query.device.type not in ("cpu", "cuda"):
        reasons.append(f"tensors on {query.device.type}; the kernels run on CUDA")
    return reasons


def attention(*args: object, **kwargs: object) -> torch.Tensor:
    raise NotImplementedError("Backend.TRITON has no kernels yet; unavailable_reasons() says so first")
