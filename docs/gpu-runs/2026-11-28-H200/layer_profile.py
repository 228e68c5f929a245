import torch, layers, time
from torch.profiler import profile, ProfilerActivity
torch.manual_seed(0)
dev = "cuda"
def make(mod):
    enc = mod.TransformerEncoder(mod.TransformerEncoderLayer(512, 8, 2048, batch_first=True), 6, enable_nested_tensor=False)
    return enc.to(dev)
ref = make(torch.nn); ours = make(layers); ours.load_state_dict(ref.state_dict())
x = torch.randn(32, 512, 512, device=dev)
for name, m in (("torch", ref), ("ours", ours)):
    for train in (False, True):
        m.train(train)
        def step():
            with torch.autocast("cuda", torch.float16):
                y = m(x)
            if train:
                y.float().sum().backward()
        for _ in range(3): step()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10): step()
        torch.cuda.synchronize(); print(name, "train" if train else "eval", (time.perf_counter() - t) / 10 * 1e3, "ms", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            step(); torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)
