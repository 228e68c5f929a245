"""The profile of 2026-11-28 (H200): a torch.nn-shaped encoder (6 layers, d_model 512, 8 heads, L=512, batch 32,
fp16 autocast), torch's and this package's with the same weights, eval and train: wall time per step and a torch
profiler table each (layer_profile.txt). Run from the repository root: ``python docs/gpu-runs/.../layer_profile.py``."""

import time

import torch
from torch.profiler import ProfilerActivity, profile

import layers


def make(mod):
    layer = mod.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
    return mod.TransformerEncoder(layer, 6, enable_nested_tensor=False).to("cuda")


def step(model, x, train):
    with torch.autocast("cuda", torch.float16):
        y = model(x)
    if train:
        y.float().sum().backward()


def main():
    torch.manual_seed(0)
    ref = make(torch.nn)
    ours = make(layers)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(32, 512, 512, device="cuda")
    for name, model in (("torch", ref), ("ours", ours)):
        for train in (False, True):
            model.train(train)
            for _ in range(3):
                step(model, x, train)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                step(model, x, train)
            torch.cuda.synchronize()
            print(name, "train" if train else "eval", (time.perf_counter() - start) / 10 * 1e3, "ms", flush=True)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step(model, x, train)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
