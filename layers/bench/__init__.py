"""Layer benchmark: ``python -m layers.bench``, this package's layers against torch.nn's in one run.

Models are built with ``torch.nn`` the way real code builds them and converted with `layers.convert` (the same
weights); each case times torch's model and ours on the same input, **interleaved**: every round times each case's
torch call and then its own, so a slow phase of a shared machine hits both. The table shows medians over the
rounds, the ratio ``ours / torch`` (below 1 = ours faster) and its spread over the rounds (min..max).

Cases (`cases.CASES`; ``--cases`` picks some): a training step (forward, a loss over real tokens, backward) and
inference (eval, no grad: torch takes its fast paths) of a ``TransformerEncoder`` on a dense and on a padded batch
(~50% padding: by default the SDPA tutorial's lengths, most near L/2 and one at L; ``--lengths even`` spreads them
evenly), with an all-False mask and key padding (the translation example), DETR's encoder layer (``need_weights``
left at its default), minGPT's blocks (a float causal mask), a padded ``TransformerDecoder`` and ``Transformer``;
on request (``--cases train-padded-dense train-padded-packed ...``) the padded encoder with ours on a route forced
(`layers.skip_padding`: over the whole padded batch, or its real tokens; the default packs on the CPU only):
whether skipping the padding pays on this machine.
``--busy`` repeats the padded and dense cases while another torch job multiplies matrices on the same cores
(`busy.busy_machine`). ``--compile`` adds ``torch.compile``d rows.

``--decode`` times generation with and without key/value caches instead (`decode`).

Output: a table, a JSON file and a PNG chart in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import statistics
import sys
import warnings

import torch
from tqdm import tqdm

from kernels.bench.common import LENGTH_KINDS
from kernels.bench.timing import bar_chart, median_seconds

from .busy import busy_machine
from .cases import CASES, Case, build

__all__ = ["main"]

# The goals of the issues, as ours / torch time ratios (checked in the table, not in tests).
GOALS = {
    "train-padded": 0.45, "infer-padded": 0.40, "train-decoder": 0.45, "infer-decoder": 0.40,
    "train-transformer": 0.45, "infer-transformer": 0.40, "busy train-padded": 0.6,
}  # fmt: skip
DEFAULT_GOAL, BUSY_GOAL = 1.0, 1.1
DEFAULT_CASES = [c for c in CASES if not c.endswith(("padded-dense", "padded-packed"))]
BUSY_CASES = ["train-padded", "infer-padded", "train-dense", "infer-dense"]


@dataclasses.dataclass
class Row:
    case: str
    what: str
    torch_ms: float  # medians over the rounds
    ours_ms: float
    ratio: float  # median of the per-round ratios
    ratio_min: float
    ratio_max: float
    goal: float

    @property
    def met(self) -> bool:
        return self.ratio <= self.goal


def measure(cases: list[Case], rounds: int, min_run_time: float, label: str = "") -> list[Row]:
    """Interleaved rounds: each round times every case's torch call, then ours."""
    times: dict[str, tuple[list[float], list[float]]] = {c.name: ([], []) for c in cases}
    for _ in tqdm(range(rounds), desc=f"rounds{label}", unit="round", file=sys.stderr):
        for case in cases:
            times[case.name][0].append(median_seconds(case.theirs, min_run_time) * 1e3)
            times[case.name][1].append(median_seconds(case.ours, min_run_time) * 1e3)
    rows = []
    for case in cases:
        theirs, ours = times[case.name]
        ratios = [o / t for o, t in zip(ours, theirs, strict=True)]
        name = f"{label.strip()} {case.name}".strip()
        goal = GOALS.get(name, BUSY_GOAL if label else DEFAULT_GOAL)
        rows.append(Row(name, case.what, statistics.median(theirs), statistics.median(ours),
                        statistics.median(ratios), min(ratios), max(ratios), goal))  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    autocast = (
        torch.autocast(args.device, dtype=getattr(torch, args.autocast)) if args.autocast else contextlib.nullcontext()
    )
    with autocast:
        cases = build(args, args.cases)
        rows = measure(cases, args.rounds, args.min_run_time)
        if args.busy:
            busy = build(args, [c for c in BUSY_CASES if c in args.cases])
            with busy_machine():
                rows += measure(busy, args.rounds, args.min_run_time, label=" busy")
        if args.compile:
            compiled = build(args, args.cases)
            for case in compiled:
                case.theirs, case.ours = torch.compile(case.theirs), torch.compile(case.ours)
                case.name = f"compiled {case.name}"
            rows += measure(compiled, args.rounds, args.min_run_time)
    return rows


def title(args: argparse.Namespace) -> str:
    precision = f"autocast {args.autocast}" if args.autocast else args.dtype
    return (
        f"torch.nn vs fusedlayers on {args.device}, {precision}, {torch.get_num_threads()} threads: {args.num_layers} "
        f"layers, d_model {args.d_model}, nhead {args.nhead}, feed-forward {args.dim_feedforward}, dropout "
        f"{args.dropout}, batch {args.batch}, length {args.seq_len} ({args.lengths} lengths when padded); medians of "
        f"{args.rounds} interleaved rounds"
    )


def format_table(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [title(args), "", f"{'case':<26} {'torch ms':>9} {'ours ms':>9} {'ours/torch':>10} {'spread':>12}  goal"]
    for r in rows:
        spread = f"{r.ratio_min:.2f}..{r.ratio_max:.2f}"
        verdict = f"<= {r.goal:.2f} ({'met' if r.met else 'NOT met'})"
        lines.append(f"{r.case:<26} {r.torch_ms:>9.2f} {r.ours_ms:>9.2f} {r.ratio:>10.3f} {spread:>12}  {verdict}")
    lines += ["", "cases:"] + [f"  {r.case}: {r.what}" for r in rows if not r.case.startswith(("busy", "compiled"))]
    if any(r.case.startswith("busy") for r in rows):
        lines.append("  busy ...: the same, while another torch job multiplies matrices on the same cores")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m layers.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--autocast", choices=["float16", "bfloat16"], help="run under torch.autocast to this dtype")
    parser.add_argument(
        "--cases", nargs="+", default=DEFAULT_CASES, choices=CASES,
        help="the cases to time (default: all but the padded-dense/-packed A/B, ours with skip_padding forced)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--lengths", default="tutorial", choices=LENGTH_KINDS,
        help="padded batches: the SDPA tutorial's lengths (most near half, one full; the issues' goals) or evenly "
        "spread ones (many distinct lengths)",
    )  # fmt: skip
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--nhead", type=int, default=8)
    parser.add_argument("--dim-feedforward", type=int, default=1024)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median and spread)")
    parser.add_argument("--busy", action=argparse.BooleanOptionalAction, default=True, help="busy-machine cases")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile rows")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing")
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-results"))
    decode = parser.add_argument_group("--decode: generation with and without key/value caches")
    decode.add_argument("--decode", action="store_true", help="run the decoding benchmark instead")
    decode.add_argument("--new-tokens", type=int, default=256)
    decode.add_argument("--prompt-len", type=int, default=16)
    decode.add_argument("--block-size", type=int, default=512, help="the model's context")
    decode.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    decode.add_argument(
        "--decode-compile", action=argparse.BooleanOptionalAction, default=True,
        help="also time the cached generation with the model under torch.compile(fullgraph=True)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main_decode(args: argparse.Namespace) -> list:
    from . import decode

    rows, kernel = decode.run(args)
    table = decode.format_table(rows, kernel, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out_dir / "decode.json", args.out_dir / "decode.png"
    config = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
    payload = {
        "config": config,
        "torch": torch.__version__,
        "rows": [dataclasses.asdict(r) for r in rows],
        "kernel": kernel,
    }
    json_path.write_text(json.dumps(payload, indent=2))
    series = {"no cache": [r.without_ms for r in rows], "KVCache": [r.with_ms for r in rows]}
    if all(r.compiled_ms is not None for r in rows):
        series["KVCache, compiled step"] = [r.compiled_ms for r in rows]
    plotted = bar_chart(png_path, table.splitlines()[0], [r.case for r in rows], series, "ms per generation")
    print(table)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return rows


def main(argv: list[str] | None = None) -> list:
    args = parse_args(argv)
    if args.decode:
        return main_decode(args)
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
        "threads": torch.get_num_threads(),
        "rows": [{**dataclasses.asdict(r), "met": r.met} for r in rows],
    }
    json_path.write_text(json.dumps(payload, indent=2))
    series = {"torch.nn": [r.torch_ms for r in rows], "fusedlayers": [r.ours_ms for r in rows]}
    plotted = bar_chart(png_path, title(args), [r.case for r in rows], series, "ms per call (lower is better)")
    print(table)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return rows
