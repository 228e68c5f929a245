"""Which backend goes first on a GPU, from measurements rather than hope.

On CUDA the dispatcher tries ``TRITON`` first, except for the cases a kernel sweep (``python -m kernels.bench
--sweep``) measured it slower than torch's best kernel on the same card: those cases are recorded in
``measured_order.json`` (next to this file, with the card, the date and the ratio), and for a call of the kind the
sweep times (`measured_kind`: dense self-attention, no mask tensor, as many key/value heads as query heads; with
dropout or not) in such a case ``TORCH`` goes first; `kernels.explain` says so with the measured reason. Other calls
(nested inputs, masks, bands other than top-left causal, ...) keep ``TRITON`` first. A card or a case never
measured keeps the default order.

Two extrapolations, both towards torch and both from measurements (docs/decisions.md): lengths below 1k take the
1k measurement (on an H200 a TRITON forward + backward cost about 2 ms of host time at every 1k case, whatever the
head dim or causality, so shorter calls lose more), and a call with dropout takes the measurement without it (the
fused forward with dropout took 4.1x its time without, in a training layer on the same card, where torch's cuDNN
kernel serves dropout; measured before the kernels drew one Philox call per four elements: the rule stays until a
card measures that).

``TORCH`` then runs the torch kernel the sweep measured fastest (`torch_priority`), not the one torch would pick:
torch puts cuDNN after flash in its default order (pytorch#138522), and on an H200 cuDNN was 1.7x faster than torch's
flash at d=128, fp16, while this package's kernel was between the two (docs/benchmarks.md, GPU runs). bfloat16 calls
use the float16 measurement of the same case until bfloat16 is measured (the same kernels and tensor-core rate on
both).

``python -m kernels.preferences SWEEP.json`` writes the file from a sweep's JSON (see docs/decisions.md).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import pathlib
import sys

import torch

from .masks import band_of

try:
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as torch_sdpa_kernel

    if "set_priority" not in inspect.signature(torch_sdpa_kernel).parameters:
        raise ImportError("torch.nn.attention.sdpa_kernel has no set_priority")
except ImportError:  # an older torch: no priority order to set
    SDPBackend = torch_sdpa_kernel = None

FILE = pathlib.Path(__file__).with_name("measured_order.json")
SLOWER = 1.05  # TRITON time / torch's best above this (beyond noise): torch goes first


def _case(dtype: torch.dtype | str, head_dim: int, causal: bool, length: int) -> str:
    """The key of a case: dtype, head-dim bucket (64 / 128 / 256), causal, length bucket (< 4k, 4k, 16k: the 1k
    bucket holds shorter lengths too, see the module's docstring)."""
    bucket = next(b for b in (64, 128, 256, 1 << 30) if head_dim <= b)
    span = next((n for n in (16384, 4096) if length >= n), 1024)
    return f"{str(dtype).removeprefix('torch.')}/d{bucket}/{'causal' if causal else 'full'}/L{span}"


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(FILE.read_text()) if FILE.exists() else {}


@functools.lru_cache(maxsize=8)
def _card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def _entry(
    query: torch.Tensor, key: torch.Tensor | None, attn_mask: object, is_causal: bool, dropout_p: float = 0.0
) -> dict | None:
    """The measured entry for this call on its card, or None (CPU, or not a call of the kind measured)."""
    if query.device.type != "cuda":
        return None
    case = measured_kind(query, key, attn_mask, is_causal, dropout_p)
    return None if case is None else lookup(_table(), _card(query.device), *case)


def measured_kind(
    query: torch.Tensor, key: torch.Tensor | None, attn_mask: object, is_causal: bool, dropout_p: float = 0.0
) -> tuple[torch.dtype, int, bool, int] | None:
    """``(dtype, head dim, causal, length)`` for a call of the kind the sweep times (dense self-attention, as many
    key/value heads as query heads, no mask tensor; causal or not; dropout takes the measurement without it), else
    None: other calls keep the default order, since torch serves them with other kernels than the one measured (a
    mask tensor: neither flash nor cuDNN)."""
    if query.is_nested or key is None:
        return None
    if key.size(-3) != query.size(-3) or key.size(-2) != query.size(-2):
        return None
    band = band_of(attn_mask)
    if attn_mask is not None and (band is None or not band.is_causal_upper_left()):
        return None  # a mask tensor, or a band torch has no kernel for (only TRITON skips its blocks)
    return query.dtype, query.size(-1), is_causal or band is not None, query.size(-2)


def torch_first(
    query: torch.Tensor, key: torch.Tensor | None, attn_mask: object, is_causal: bool, dropout_p: float = 0.0
) -> str | None:
    """The measured reason to try ``TORCH`` before ``TRITON`` for this call, or None."""
    entry = _entry(query, key, attn_mask, is_causal, dropout_p)
    return None if entry is None else reason(entry)


def lookup(table: dict, card: str, dtype, head_dim: int, causal: bool, length: int) -> dict | None:
    """The entry of ``table`` for this card and case (a bfloat16 case falls back to its float16 measurement,
    marked ``"measured_dtype"``), or None."""
    cases = table.get(card, {})
    entry = cases.get(_case(dtype, head_dim, causal, length))
    if entry is None and str(dtype).removeprefix("torch.") == "bfloat16":
        entry = cases.get(_case("float16", head_dim, causal, length))
        entry = None if entry is None else {**entry, "measured_dtype": "float16"}
    return None if entry is None else {**entry, "card": card}


def reason(entry: dict) -> str:
    """An entry of `lookup` as the sentence `kernels.explain` shows."""
    on = f", on {entry['measured_dtype']}" if "measured_dtype" in entry else ""
    where = f"{entry['card']} ({entry['date']}{on}"
    return (
        f"measured slower than torch's {entry['torch_kernel']} on {where}): "
        f"{entry['ratio']:.2f}x its time for {entry['pass']} at this size"
    )


def measured_reason(table: dict, card: str, dtype, head_dim: int, causal: bool, length: int) -> str | None:
    """The entry of ``table`` for this card and case, as a reason, or None."""
    entry = lookup(table, card, dtype, head_dim, causal, length)
    return None if entry is None else reason(entry)


_TORCH_KERNELS = {  # the sweep's names of torch's kernels -> (torch's backend, whether torch enables it now)
    "flash": ("FLASH_ATTENTION", "flash_sdp_enabled"),
    "efficient": ("EFFICIENT_ATTENTION", "mem_efficient_sdp_enabled"),
    "cuDNN": ("CUDNN_ATTENTION", "cudnn_sdp_enabled"),
    "math": ("MATH", "math_sdp_enabled"),
}


def priority_order(best: str, enabled: dict[str, bool]) -> list[str] | None:
    """torch's kernels in the order to try them: the measured ``best`` first, then the others in torch's own order,
    only those ``enabled`` (a ``torch.nn.attention.sdpa_kernel`` block of the caller's is respected); None where the
    best one is not enabled or unknown (torch's own choice stands)."""
    if not enabled.get(best):
        return None
    rest = [name for name in ("flash", "efficient", "cuDNN", "math") if name != best and enabled.get(name)]
    return [best, *rest]


def torch_priority(query: torch.Tensor, key: torch.Tensor, attn_mask: object, is_causal: bool, dropout_p: float = 0.0):
    """A ``torch.nn.attention.sdpa_kernel(..., set_priority=True)`` block that makes torch try the kernel measured
    fastest for this call first, or None (nothing measured, CPU, tracing, or an older torch)."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if query.device.type != "cuda" or torch_sdpa_kernel is None or tracing:
        return None
    entry = _entry(query, key, attn_mask, is_causal, dropout_p)
    if entry is None:
        return None
    enabled = {name: getattr(torch.backends.cuda, flag)() for name, (_, flag) in _TORCH_KERNELS.items()}
    order = priority_order(entry["torch_kernel"], enabled)
    if order is None:
        return None
    return torch_sdpa_kernel([getattr(SDPBackend, _TORCH_KERNELS[n][0]) for n in order], set_priority=True)


def _training_ms(times: dict, variant: str, shape: tuple) -> tuple[float, str] | None:
    """A variant's time for forward + backward at one shape: the fwd+bwd point, else its fwd and bwd points added
    (a sweep whose time budget ran out before the fwd+bwd pass of a length), with the pass it came from."""
    both = times.get((variant, "fwd+bwd", *shape))
    if both:
        return both, "fwd+bwd"
    fwd, bwd = times.get((variant, "fwd", *shape)), times.get((variant, "bwd", *shape))
    return (fwd + bwd, "fwd and bwd") if fwd and bwd else None


def from_sweep(path: pathlib.Path) -> dict:
    """The cases of a sweep's JSON where TRITON (forward + backward) was slower than torch's best kernel."""
    data = json.loads(path.read_text())
    device, date = data.get("device", "unknown"), data.get("date", "")
    times = {(p["variant"], p["step"], p["dtype"], p["head_dim"], p["causal"], p["seq_len"]): p["ms"]
             for p in data["points"] if p.get("ms")}  # fmt: skip
    shapes = sorted({key[2:] for key in times}, key=str)
    torch_variants = sorted({key[0] for key in times if key[0].startswith("torch")})
    cases: dict[str, dict] = {}
    for shape in shapes:
        ours = _training_ms(times, "TRITON", shape)
        if ours is None:
            continue
        # torch's kernels timed the same way (fwd+bwd against fwd+bwd, or fwd and bwd added against the same)
        theirs = [(t, v) for v in torch_variants if (t := _training_ms(times, v, shape)) and t[1] == ours[1]]
        if not theirs:
            continue
        (best_ms, step), best = min(theirs)
        if ours[0] / best_ms > SLOWER:
            cases[_case(*shape)] = {"ratio": round(ours[0] / best_ms, 3), "torch_kernel": best.removeprefix("torch "),
                                    "pass": step, "date": date}  # fmt: skip
    return {device: cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.preferences",
        description="Record in measured_order.json the cases where a kernel sweep timed TRITON slower than torch's "
        "best kernel (forward + backward); a case measured again replaces its entry, the others stay.",
    )
    parser.add_argument("sweep", type=pathlib.Path, help="the JSON of `python -m kernels.bench --sweep`")
    args = parser.parse_args(argv)
    if not args.sweep.is_file():
        parser.error(f"no such file: {args.sweep} (pass the kernels_sweep.json a sweep wrote)")
    table = json.loads(FILE.read_text()) if FILE.exists() else {}
    for card, cases in from_sweep(args.sweep).items():  # a new measurement replaces its case only
        table.setdefault(card, {}).update(cases)
    FILE.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"wrote {FILE}: {sum(len(c) for c in table.values())} case(s) where TORCH goes first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
