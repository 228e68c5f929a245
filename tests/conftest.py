"""Test-session set-up that must happen before `kernels` is imported.

Without a GPU, the fused Triton kernels run under the Triton interpreter (numerics on CPU; TRITON-NOTES.md):
it is chosen when ``@triton.jit`` decorates, so the variable is set here, before any test imports kernels.
The offline compile check runs in its own process without it (tests/kernels/test_compile_check.py).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice about the default
