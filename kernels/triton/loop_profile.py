"""A static profile of a compiled kernel's hot loop, read from its machine code (SASS) without a GPU.

The hot loop is the innermost loop that issues matrix instructions (``HGMMA`` on sm_90, ``HMMA`` before), as many as
any loop does (a whole block's products), with the fewest instructions: in these kernels the unmasked loop over
whole blocks, since the masked loops do the same work plus the mask. (Until 2026-11-28 it was the loop with the
fewest instructions of all; the forward with a window and dropout compiles a 621-instruction loop with 4 of the
20 HGMMA of an iteration, which that rule took for the hot loop.) Its instruction count is what each warp issues
per iteration; times the warps of a program and divided by the iteration's matrix-product FLOPs it gives
**warp-instructions per MFLOP**: fewer means less time spent outside the tensor cores. It is a proxy — it ignores
latency hiding, barriers and memory stalls — and a figure for comparing compiles, never a speed claim
(TRITON-NOTES.md).

A loop is a backward branch; the retry stubs of barrier waits, placed after the kernel's exit, branch back into
the loop body and would look like loops that contain it, so only loops that contain no other matrix loop count.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

# Matrix-product FLOPs of one hot-loop iteration, per BLOCK_M * BLOCK_N * head dim: the forward does Q K^T and P V,
# the dQ pass Q K^T, dO V^T and dS K, the dK/dV pass those and P^T dO, dS^T Q; above head dim 128 dK/dV runs as a dV
# launch (Q K^T, P^T dO) and a dK launch (Q K^T, dO V^T, dS^T Q), and where those run in halves of the head dim
# (`ops.dkdv_parts`) each half does them with half of its last product; a dQ half does Q K^T, dO V^T and half of dS K;
# the decode split, like the forward, Q K^T and P V (on a 16-row tile, most of its rows padding at one new token:
# its figure compares compiles of that kernel, it is bound by reading the cache, not by these products).
LOOP_FLOPS = {
    "fwd": 4, "bwd_dq": 6, "bwd_dkdv": 8, "bwd_dv": 4, "bwd_dk": 6, "bwd_dq_half": 5, "bwd_dv_half": 3,
    "bwd_dk_half": 5, "decode": 4,
}  # fmt: skip

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.MULTILINE)
_BRANCH = re.compile(r"\bBRA\b[^;]*?0x([0-9a-f]+)")


def disassemble(cubin: bytes) -> str:
    """The SASS of a cubin, from the ``cuobjdump`` shipped in the triton wheel."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        done = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    return done.stdout


def matmul_loops(sass: str) -> list[tuple[int, int]]:
    """``(instructions, matrix instructions)`` of each innermost loop that issues matrix instructions, in address
    order."""
    code = [(int(a, 16), text) for a, text in _INSTRUCTION.findall(sass)]
    loops = []
    for address, text in code:
        branch = _BRANCH.search(text)
        if branch is None or int(branch.group(1), 16) > address:
            continue
        start = int(branch.group(1), 16)
        body = [t for a, t in code if start <= a <= address]
        matrix = sum("HGMMA" in t or "HMMA" in t for t in body)
        if matrix:
            loops.append((start, address, len(body), matrix))
    innermost = [
        loop for loop in loops if not any(o is not loop and loop[0] <= o[0] and o[1] <= loop[1] for o in loops)
    ]
    return [(count, matrix) for _, _, count, matrix in innermost]


def warp_instructions_per_mflop(sass: str, kernel: str, block_m: int, block_n: int, head_dim: int,
                                num_warps: int) -> tuple[int | None, float | None]:  # fmt: skip
    """(instructions per warp of the hot loop, warp-instructions per MFLOP), or (None, None) without a matrix loop."""
    loops = matmul_loops(sass)
    if not loops or kernel not in LOOP_FLOPS:
        return None, None
    # a whole block's iteration issues the most matrix instructions; among those loops the unmasked one is the
    # smallest (a loop with fewer, e.g. 4 of a forward's 20 HGMMA, is not an iteration over a whole block)
    most = max(matrix for _, matrix in loops)
    instructions = min(count for count, matrix in loops if matrix == most)
    flops = LOOP_FLOPS[kernel] * block_m * block_n * head_dim
    return instructions, instructions * num_warps / (flops / 1e6)
