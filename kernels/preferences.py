"""Which backend goes first on a GPU, from measurements rather than hope.

On CUDA the dispatcher tries ``TRITON`` first, except for the cases a kernel sweep (``python -m kernels.bench
--sweep``) measured it slower than torch's best kernel on the same card: those cases are recorded in
``measured_order.json`` (next to this file, with the card, the date and the ratio), and for a plain dense call
(a call torch's SDPA serves with every feature it asks for) in such a case ``TORCH`` goes first; `kernels.explain`
says so with the measured reason. Calls that use what only this package has (nested inputs, bands other than
top-left causal) keep ``TRITON`` first. A card or a case never measured keeps the default order.

``python -m kernels.preferences SWEEP.json`` writes the file from a sweep's JSON (see docs/decisions.md).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import torch

from .masks import band_of

FILE = pathlib.Path(__file__).with_name("measured_order.json")
SLOWER = 1.05  # TRITON time / torch's best above this (beyond noise): torch goes first


def _case(dtype: torch.dtype | str, head_dim: int, causal: bool, length: int) -> str:
    """The key of a case: dtype, head-dim bucket (64 / 128 / 256), causal, length bucket (>= 1k, 4k, 16k)."""
    bucket = next(b for b in (64, 128, 256, 1 << 30) if head_dim <= b)
    span = next((n for n in (16384, 4096, 1024) if length >= n), 0)
    return f"{str(dtype).removeprefix('torch.')}/d{bucket}/{'causal' if causal else 'full'}/L{span}"


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(FILE.read_text()) if FILE.exists() else {}


def torch_first(query: torch.Tensor, key: torch.Tensor | None, attn_mask: object, is_causal: bool) -> str | None:
    """The measured reason to try ``TORCH`` before ``TRITON`` for this call, or None."""
    if query.device.type != "cuda" or query.is_nested or key is None:
        return None
    band = band_of(attn_mask)
    if band is not None and not band.is_causal_upper_left():
        return None  # a band torch has no kernel for: only TRITON skips its blocks
    causal = is_causal or band is not None
    return measured_reason(_table(), torch.cuda.get_device_name(query.device), query.dtype, query.size(-1), causal,
                           query.size(-2))  # fmt: skip


def measured_reason(table: dict, card: str, dtype, head_dim: int, causal: bool, length: int) -> str | None:
    """The entry of ``table`` for this card and case, as a reason, or None."""
    entry = table.get(card, {}).get(_case(dtype, head_dim, causal, length))
    if entry is None:
        return None
    return (
        f"measured slower than torch's {entry['torch_kernel']} on {card} ({entry['date']}): "
        f"{entry['ratio']:.2f}x its time for {entry['pass']} at this size"
    )


def from_sweep(path: pathlib.Path) -> dict:
    """The cases of a sweep's JSON where TRITON (fwd + bwd) was slower than torch's best kernel."""
    data = json.loads(path.read_text())
    device, date = data.get("device", "unknown"), data.get("date", "")
    cases: dict[str, dict] = {}
    for p in data["points"]:
        if p["step"] != "fwd+bwd" or p["variant"] != "TRITON" or p["vs_best_torch"] is None:
            continue
        if p["vs_best_torch"] > SLOWER:
            best = min(
                (q for q in data["points"] if q["variant"].startswith("torch") and q["ms"] and
                 (q["step"], q["dtype"], q["head_dim"], q["causal"], q["seq_len"]) ==
                 (p["step"], p["dtype"], p["head_dim"], p["causal"], p["seq_len"])),
                key=lambda q: q["ms"],
            )  # fmt: skip
            cases[_case(p["dtype"], p["head_dim"], p["causal"], p["seq_len"])] = {
                "ratio": round(p["vs_best_torch"], 3), "torch_kernel": best["variant"].removeprefix("torch "),
                "pass": p["step"], "date": date,
            }  # fmt: skip
    return {device: cases}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kernels.preferences SWEEP.json", file=sys.stderr)
        return 2
    table = json.loads(FILE.read_text()) if FILE.exists() else {}
    table.update(from_sweep(pathlib.Path(argv[0])))
    FILE.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"wrote {FILE}: {sum(len(c) for c in table.values())} case(s) where TORCH goes first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
