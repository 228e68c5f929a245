"""The benchmark's cases: models built with ``torch.nn`` the way real code builds them, converted with
`layers.convert` (the same weights), and one timed call of each.

Shape legend: ``N`` batch, ``L`` (source) length, ``T`` target length, ``E`` model width.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn

from kernels.bench.common import padded_lengths

from ..convert import convert
from ..packing import skip_padding


@dataclasses.dataclass
class Case:
    name: str
    what: str  # one line for the table
    theirs: Callable[[], None]  # one timed call of the torch.nn model
    ours: Callable[[], None]  # the same call of the converted model
    models: tuple[nn.Module, nn.Module] | None = None  # (torch.nn's, ours), for inspection


class DetrEncoderLayer(nn.Module):
    """DETR's encoder layer (post-norm): position embeddings added to queries and keys, and ``self_attn`` called
    with torch's default ``need_weights=True`` (DETR keeps only ``[0]``)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src, src_key_padding_mask=None, pos=None):  # src (L, N, E)
        q = k = src + pos
        src2 = self.self_attn(q, k, value=src, key_padding_mask=src_key_padding_mask)[0]
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(torch.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class MinGPTBlock(nn.Module):
    """minGPT's block: ``nn.MultiheadAttention`` with a float causal ``attn_mask`` and the default ``need_weights``."""

    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask)[0]
        return x + self.mlp(self.ln2(x))


def _step(model: nn.Module, forward: Callable[[nn.Module], torch.Tensor], keep: torch.Tensor | None, train: bool):
    """A training step (forward, a loss over real tokens, backward) or an inference call (eval, no grad)."""

    def train_step() -> None:
        model.train()
        out = forward(model)
        loss = out.square().mean() if keep is None else (out.square() * keep).sum() / keep.sum()
        loss.backward()
        for p in model.parameters():
            p.grad = None

    def inference() -> None:
        model.eval()
        with torch.no_grad():
            forward(model)

    return train_step if train else inference


def build(args: argparse.Namespace, names: list[str]) -> list[Case]:
    """The cases named in ``names`` (see `CASES`)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    N, L, E = args.batch, args.seq_len, args.d_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, L, E, generator=gen).to(device, dtype)  # (N, L, E)
    lengths = torch.tensor(padded_lengths(N, L, gen, args.lengths), device=device)
    pad = torch.arange(L, device=device)[None, :] >= lengths[:, None]  # (N, L), True = padding
    keep = (~pad)[..., None].to(dtype)  # (N, L, 1): the loss reads real tokens only
    T = max(2, L // 2)
    tgt = torch.randn(N, T, E, generator=gen).to(device, dtype)
    tgt_pad = (
        torch.arange(T, device=device)[None, :]
        >= torch.tensor(padded_lengths(N, T, gen, args.lengths), device=device)[:, None]
    )
    tgt_keep = (~tgt_pad)[..., None].to(dtype)
    causal = nn.Transformer.generate_square_subsequent_mask(T, device=device, dtype=dtype)
    no_op = torch.zeros(L, L, dtype=torch.bool, device=device)  # translation model: an all-False src_mask

    def layer(**kw):
        return nn.TransformerEncoderLayer(E, args.nhead, args.dim_feedforward, args.dropout, batch_first=True, **kw)

    def models(make: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)
        theirs = make().to(device, dtype)
        return theirs, convert(copy.deepcopy(theirs))

    built: dict[str, tuple[nn.Module, nn.Module]] = {}

    def once(name: str, make: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
        if name not in built:
            built[name] = models(make)
        return built[name]

    def encoder():
        return once("encoder", lambda: nn.TransformerEncoder(layer(), args.num_layers, enable_nested_tensor=True))

    def decoder():
        return once(
            "decoder",
            lambda: nn.TransformerDecoder(
                nn.TransformerDecoderLayer(E, args.nhead, args.dim_feedforward, args.dropout, batch_first=True),
                args.num_layers,
            ),
        )

    def transformer():
        return once(
            "transformer",
            lambda: nn.Transformer(
                E, args.nhead, args.num_layers, args.num_layers, args.dim_feedforward, args.dropout, batch_first=True
            ),
        )

    def detr():
        return once("detr", lambda: nn.Sequential(DetrEncoderLayer(E, args.nhead, args.dim_feedforward, args.dropout)))

    def mingpt():
        return once(
            "mingpt", lambda: nn.ModuleList(MinGPTBlock(E, args.nhead, args.dropout) for _ in range(args.num_layers))
        )

    pos = torch.randn(L, N, E, generator=gen).to(device, dtype)
    x_seq_first = x.transpose(0, 1).contiguous()  # DETR is (L, N, E)
    gpt_mask = nn.Transformer.generate_square_subsequent_mask(L, device=device, dtype=dtype)

    def detr_forward(m):
        return m[0](x_seq_first, src_key_padding_mask=pad, pos=pos).transpose(0, 1)

    def gpt_forward(m):
        h = x
        for block in m:
            h = block(h, gpt_mask)
        return h

    def forced_route(packed: bool):  # ours on the route chosen (a no-op for torch's model), whatever the default
        def forward(m):
            with skip_padding(packed):
                return m(x, src_key_padding_mask=pad)

        return forward

    table = {
        "dense": (encoder, lambda m: m(x), None, "TransformerEncoder, no padding"),
        "padded": (encoder, lambda m: m(x, src_key_padding_mask=pad), keep, "TransformerEncoder, ~50% padding"),
        "padded-dense": (encoder, forced_route(False), keep, "the same, ours with skip_padding(False)"),
        "padded-packed": (encoder, forced_route(True), keep, "the same, ours with skip_padding(True)"),
        "noop-mask": (
            encoder,
            lambda m: m(x, mask=no_op, src_key_padding_mask=pad),
            keep,
            "TransformerEncoder, all-False mask + key padding (translation model)",
        ),
        "need-weights": (detr, detr_forward, keep, "DETR encoder layer: default need_weights=True, key padding"),
        "float-causal": (mingpt, gpt_forward, None, "minGPT blocks: float causal attn_mask, default need_weights"),
        "decoder": (
            decoder,
            lambda m: m(tgt, x, tgt_mask=causal, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=pad),
            tgt_keep,
            "TransformerDecoder, causal, padded target and memory",
        ),
        "transformer": (
            transformer,
            lambda m: m(
                x,
                tgt,
                tgt_mask=causal,
                src_key_padding_mask=pad,
                tgt_key_padding_mask=tgt_pad,
                memory_key_padding_mask=pad,
            ),
            tgt_keep,
            "Transformer, padded source and target",
        ),
    }
    cases = []
    for name in names:
        step, which = name.split("-", 1)
        make, forward, loss_keep, what = table[which]
        theirs, ours = make()
        train = step == "train"
        theirs_step, ours_step = _step(theirs, forward, loss_keep, train), _step(ours, forward, loss_keep, train)
        cases.append(Case(name, what, theirs_step, ours_step, (theirs, ours)))
    return cases


KINDS = [
    "dense", "padded", "padded-dense", "padded-packed", "noop-mask", "need-weights", "float-causal", "decoder",
    "transformer",
]  # fmt: skip
CASES = [f"{step}-{kind}" for kind in KINDS for step in ("train", "infer")]
