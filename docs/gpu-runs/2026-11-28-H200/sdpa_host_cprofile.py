"""The host-time measurement of 2026-11-28 (H200): one fused SDPA call (B=32, 8 heads, L=512, d=64, fp16) forward
without grad and forward + backward, wall time (synchronised) and host time (not), then a Python profile of 20
forward + backward calls with dropout (sdpa_host_cprofile.txt)."""

import cProfile
import pstats
import time

import torch

import kernels
from kernels import Backend, sdpa_kernel


def main():
    q = torch.randn(32, 8, 512, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True)
    v = torch.randn_like(q, requires_grad=True)

    def call(p, mode):
        with sdpa_kernel(Backend.TRITON):
            if mode == "fwd-nograd":
                with torch.no_grad():
                    kernels.scaled_dot_product_attention(q, k, v, dropout_p=p)
            else:
                kernels.scaled_dot_product_attention(q, k, v, dropout_p=p).sum().backward()

    for p in (0.0, 0.1):
        for mode in ("fwd-nograd", "fwd+bwd"):
            for _ in range(3):
                call(p, mode)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                call(p, mode)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / 20
            start = time.perf_counter()
            for _ in range(20):
                call(p, mode)
            host = (time.perf_counter() - start) / 20
            torch.cuda.synchronize()
            print(f"p={p} {mode}: wall {wall * 1e6:.0f} us/call, host (no sync) {host * 1e6:.0f} us/call", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        call(0.1, "fwd+bwd")
    profiler.disable()
    torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
