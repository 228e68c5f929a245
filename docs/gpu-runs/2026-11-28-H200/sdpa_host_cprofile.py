import cProfile, pstats, time, torch, kernels
from kernels import Backend, sdpa_kernel
q = torch.randn(32, 8, 512, 64, device="cuda", dtype=torch.float16, requires_grad=True)
k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
def fwd(p=0.0):
    with sdpa_kernel(Backend.TRITON):
        return kernels.scaled_dot_product_attention(q, k, v, dropout_p=p)
for p in (0.0, 0.1):
    for _ in range(3): fwd(p).sum().backward()
    torch.cuda.synchronize()
    for mode in ("fwd-nograd", "fwd+bwd"):
        def it():
            if mode == "fwd-nograd":
                with torch.no_grad(): fwd(p)
            else:
                fwd(p).sum().backward()
        for _ in range(3): it()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(20): it()
        torch.cuda.synchronize(); wall = (time.perf_counter() - t) / 20
        t = time.perf_counter()
        for _ in range(20): it()
        host = (time.perf_counter() - t) / 20; torch.cuda.synchronize()
        print(f"p={p} {mode}: wall {wall*1e6:.0f} us/call, host (no sync) {host*1e6:.0f} us/call", flush=True)
pr = cProfile.Profile(); pr.enable()
for _ in range(20): fwd(0.1).sum().backward()
pr.disable(); torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("cumulative").print_stats(45)
