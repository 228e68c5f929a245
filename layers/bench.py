"""Layer benchmark: ``python -m layers.bench``, this package's encoder against torch.nn's in one run.

A stack of ``TransformerEncoderLayer`` (batch_first) is built with torch.nn and converted to this package's
layers with the same weights. Each case times torch's model and ours on the same input and reports the
ratio ``ours / torch`` (below 1 = ours faster):

- training step (forward + backward of a loss over real tokens) and inference (eval, no grad: torch takes its
  fused fast path, and for a padded batch its nested-tensor fast path);
- a dense batch, and a padded batch (lengths spread evenly up to L: about 50% padding) with a bool
  ``src_key_padding_mask``;
- eager, and compiled with ``torch.compile`` (``--no-compile`` skips it: compiling costs tens of seconds).

Output: a table, a JSON file and a PNG chart in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pathlib
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from kernels.bench import padded_lengths
from kernels.bench.timing import bar_chart, median_seconds

from .convert import convert

# The goals of the layer issue, as ours / torch time ratios, checked in the table (not in tests).
GOALS = {
    ("train", "dense"): 1.0,
    ("train", "padded"): 1 / 1.8,
    ("inference", "padded"): 1 / 2.0,
}


@dataclasses.dataclass
class Row:
    step: str  # "train" or "inference"
    batch: str  # "dense" or "padded"
    mode: str  # "eager" or "compiled"
    torch_ms: float
    ours_ms: float

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.torch_ms

    @property
    def goal(self) -> float | None:
        return GOALS.get((self.step, self.batch)) if self.mode == "eager" else None


def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        args.d_model, args.nhead, args.dim_feedforward, args.dropout, batch_first=True, device=device, dtype=dtype
    )
    theirs = nn.TransformerEncoder(layer, args.num_layers, enable_nested_tensor=True)
    ours = convert(copy.deepcopy(theirs))
    return theirs, ours


def make_step(model: nn.Module, x: torch.Tensor, pad: torch.Tensor | None, train: bool) -> Callable[[], None]:
    keep = None if pad is None else ~pad[..., None]  # (N, L, 1); the loss reads real tokens only

    def train_step() -> None:
        out = model(x, src_key_padding_mask=pad)
        loss = out.square().mean() if keep is None else (out.square() * keep).sum() / keep.sum()
        loss.backward()
        for p in model.parameters():
            p.grad = None

    def inference() -> None:
        with torch.no_grad():
            model(x, src_key_padding_mask=pad)

    model.train(train)
    return train_step if train else inference


def run(args: argparse.Namespace) -> list[Row]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    theirs, ours = build_models(args, device, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.seq_len, args.d_model, generator=gen).to(device, dtype)
    lengths = torch.tensor(padded_lengths(args.batch, args.seq_len, gen), device=device)
    pad = torch.arange(args.seq_len, device=device)[None, :] >= lengths[:, None]  # (N, L), True = padding
    cases = [
        (step, batch, mode)
        for mode in (("eager", "compiled") if args.compile else ("eager",))
        for step in ("train", "inference")
        for batch in ("dense", "padded")
    ]
    compiled = {}
    rows = []
    for step, batch, mode in tqdm(cases, desc="cases", unit="case", file=sys.stderr):
        times = []
        for name, model in (("torch", theirs), ("ours", ours)):
            if mode == "compiled":  # one compiled wrapper per model; it recompiles per case as needed
                model = compiled.setdefault(name, torch.compile(model))
            call = make_step(model, x, pad if batch == "padded" else None, step == "train")
            times.append(median_seconds(call, args.min_run_time) * 1e3)
        rows.append(Row(step, batch, mode, *times))
    return rows


def title(args: argparse.Namespace) -> str:
    return (
        f"TransformerEncoder on {args.device}, {args.dtype}: {args.num_layers} layers, d_model {args.d_model}, "
        f"nhead {args.nhead}, feed-forward {args.dim_feedforward}, dropout {args.dropout}, batch {args.batch}, "
        f"length {args.seq_len} (padded: ~50% padding)"
    )


def format_table(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [title(args), "", f"{'case':<28} {'torch ms':>9} {'ours ms':>9} {'ours/torch':>11}  goal"]
    for r in rows:
        goal = ""
        if r.goal is not None:
            goal = f"<= {r.goal:.2f} ({'met' if r.ratio <= r.goal else 'NOT met'})"
        case = f"{r.step}, {r.batch}, {r.mode}"
        lines.append(f"{case:<28} {r.torch_ms:>9.2f} {r.ours_ms:>9.2f} {r.ratio:>11.2f}  {goal}")
    lines.append("")
    lines.append("torch: torch.nn (inference takes its fast path; padded inference its nested-tensor fast path)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m layers.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--nhead", type=int, default=8)
    parser.add_argument("--dim-feedforward", type=int, default=1024)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="also time torch.compile"
    )
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model and case")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    with warnings.catch_warnings():  # torch's notes on its own nested-tensor fast path (a prototype API)
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        rows = run(args)
    table = format_table(rows, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out_dir / "layers.json", args.out_dir / "layers.png"
    config = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
    payload = {
        "config": config,
        "torch": torch.__version__,
        "rows": [{**dataclasses.asdict(r), "ratio": r.ratio, "goal": r.goal} for r in rows],
    }
    json_path.write_text(json.dumps(payload, indent=2))
    labels = [f"{r.step}, {r.batch}, {r.mode}" for r in rows]
    series = {"torch.nn": [r.torch_ms for r in rows], "fusedlayers": [r.ours_ms for r in rows]}
    plotted = bar_chart(png_path, title(args), labels, series, "ms per call (lower is better)")
    print(table)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return rows


if __name__ == "__main__":
    main()
