"""Run by tests/kernels/test_compile_check.py in a process without TRITON_INTERPRET: launch the real launchers on
CPU tensors with a stand-in driver for an sm_90 GPU, capture what Triton's JIT would compile at each launch
(``knobs.runtime.jit_cache_hook``, which also stops the launch), and print it next to what the offline compile
check derives for the same arguments, as JSON."""

from __future__ import annotations

import json
import math

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from kernels.triton import ops, tiles
from kernels.triton.compile_check import jit_specialisation


class SmNinetyDriver:
    """Just what ``JITFunction.run`` asks of a driver before it compiles."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _plain(value):
    return {str(k): str(v) for k, v in value.items()}


def main() -> None:
    captured = []

    def hook(*, compile, **_):
        captured.append(compile)
        return True  # compiled elsewhere: the JIT stops here and launches nothing

    driver.set_active(SmNinetyDriver())
    knobs.runtime.jit_cache_hook = hook
    records = []
    B, H, L, S, D = 2, 4, 200, 256, 64
    q = torch.randn(B, L, H, D, dtype=torch.float16).transpose(1, 2)  # as a layer splits heads
    k, v = (torch.randn(B, S, H, D, dtype=torch.float16).transpose(1, 2) for _ in range(2))
    cu = torch.tensor([0, 70, 200], dtype=torch.int32)
    packed = [torch.randn(200, H, 24, dtype=torch.float16) for _ in range(3)]  # (T, H, D), odd head dim
    wide = [torch.randn(1, 64, 2, 160, dtype=torch.float16).transpose(1, 2) for _ in range(3)]  # dK/dV: 2 launches
    dense, varlen = ops._Layout(q, k), ops._Layout(packed[0], packed[1], cu, cu)
    seed, keep = torch.zeros(1, dtype=torch.int64), torch.rand(L, S) > 0.5
    calls = [  # (name, (q, k, v, mask, seed, dropout_p, scale, left, right, lower_right, tf32), layout, tma)
        ("dense causal, copy engine", (q, k, v, None, None, 0.0, 1 / math.sqrt(D), -1, 0, False, False), dense, True),
        ("dense bool mask + dropout, pointers", (q, k, v, keep, seed, 0.1, 0.125, -1, -1, False, False), dense, False),
        ("packed window", (*packed, None, None, 0.0, 0.2, 31, 0, True, False), varlen, True),
        ("dense head dim 160", (*wide, None, None, 0.0, 0.08, -1, 0, False, False), ops._Layout(*wide[:2]), True),
    ]
    forcing = {"attn_fwd": (64, 32, 4, 2), "attn_bwd_dkdv": (32, 64, 4, 2), "attn_bwd_dq": (64, 32, 4, 2)}

    def record(name: str, launch: ops.Launch) -> None:
        captured.clear()
        meta = {}
        if launch.kernel in forcing:
            m, n, w, s = forcing[launch.kernel]
            meta = {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
            with tiles.forced(launch.kernel, forcing[launch.kernel]):
                ops._run(launch)
        else:
            ops._run(launch)
        fn = ops.KERNELS[launch.kernel]
        fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn
        kwargs = {**launch.kwargs, **meta}
        kwargs.setdefault("num_warps", 4)
        kwargs.setdefault("num_stages", 3)
        options_, signature, constexprs, attrs = jit_specialisation(fn, launch.args, kwargs, 90)
        (jit,) = captured
        seen = (jit["signature"], jit["constants"], jit["configs"][0], jit["num_warps"], jit["num_stages"])
        derived = (signature, constexprs, attrs, options_.num_warps, options_.num_stages)
        fields = ("signature", "constants", "attrs", "num_warps", "num_stages")
        records.append({
            "call": name,
            "kernel": launch.kernel,
            "jit": {k: _plain(v) if isinstance(v, dict) else v for k, v in zip(fields, seen, strict=True)},
            "check": {k: _plain(v) if isinstance(v, dict) else v for k, v in zip(fields, derived, strict=True)},
            "arg_names": fn.arg_names,
        })  # fmt: skip

    for name, (q_, k_, v_, mask, seed, *options), layout, tma in calls:
        forward, out, lse = ops.forward_launch(q_, k_, v_, mask, seed, *options, layout, tma=tma)
        grad = torch.randn_like(out)
        backward = ops.backward_launches(grad, q_, k_, v_, mask, seed, out, lse, *options, layout, tma=tma)[0]
        for launch in [forward, *backward]:
            record(name, launch)
    # a decoding step over a layers.KVCache: one new token, 2 query heads per key/value head, lengths int64
    new = torch.randn(B, 1, H, D, dtype=torch.float16).transpose(1, 2)
    cache_k, cache_v = (torch.randn(B, 300, H // 2, D, dtype=torch.float16).transpose(1, 2) for _ in range(2))
    for launch in ops.decode_launches(new, cache_k, cache_v, torch.tensor([300, 7]), 0.125, False)[0]:
        record("decoding step", launch)
    print(json.dumps(records))


if __name__ == "__main__":
    main()
