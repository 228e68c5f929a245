"""The variable-length profiles of the 2026-11-28 third GPU run: 5 forward + backward calls under torch.profiler.

``PYTHONPATH=. python docs/gpu-runs/2026-11-28-H200-3/varlen_profile.py [torch|triton]``: ``torch`` profiles
`kernels.scaled_dot_product_attention` on a jagged nested tensor with ``TORCH`` only (torch's ``varlen_attn``
underneath), ``triton`` profiles `kernels.varlen_attention` on the packed tensors with ``TRITON`` only. The shape
is the gpu-check's variable-length step: 64 sequences of 16-1023 tokens, 16 heads, head dim 128, float16.
"""

import sys
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from kernels import Backend, scaled_dot_product_attention, varlen_attention
from kernels.bench.common import only


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "torch"
    warnings.simplefilter("always")  # a refusal of varlen_attn would show
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(16, 1024, (64,), generator=gen).tolist()
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    packed = [
        torch.randn(sum(lengths), 16, 128, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3)
    ]

    def jagged(t: torch.Tensor) -> torch.Tensor:  # (T, H, E) -> (B, H, j, E)
        return torch.nested.nested_tensor_from_jagged(t, offsets=offsets).transpose(1, 2)

    def step() -> None:
        if which == "torch":
            with only(Backend.TORCH):
                out = scaled_dot_product_attention(*(jagged(t) for t in packed))
            out.values().sum().backward()
        else:
            cu = offsets.to(torch.int32)
            with only(Backend.TRITON):
                out = varlen_attention(*packed, cu, cu)
            out.sum().backward()

    for _ in range(3):  # compile, tune
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    print(averages.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
