"""Bad input raises a TypeError/ValueError that names the argument, the value and the fix."""

from __future__ import annotations

import re

import pytest
import torch

import kernels


def qkv(B=2, H=4, L=6, S=5, E=8, Ev=8, Hk=None, dtype=torch.float32):
    Hk = H if Hk is None else Hk
    return (
        torch.randn(B, H, L, E, dtype=dtype),
        torch.randn(B, Hk, S, E, dtype=dtype),
        torch.randn(B, Hk, S, Ev, dtype=dtype),
    )


def jagged(lengths, H=2, E=8):
    return torch.nested.nested_tensor([torch.randn(n, H, E) for n in lengths], layout=torch.jagged).transpose(1, 2)


q, k, v = qkv()

CASES = {
    "rank below 2": (
        (torch.randn(8), torch.randn(8), torch.randn(8)),
        {},
        ValueError,
        "query must have at least 2 dimensions (..., L, E), got shape (8,); add a sequence dimension",
    ),
    "ranks differ": ((q, k[0], v[0]), {}, ValueError, "key has 3 dimensions (4, 5, 8) but query has 4"),
    "head dims differ": (
        (q, torch.randn(2, 4, 5, 16), v),
        {},
        ValueError,
        "query and key must have the same head dim E, got query (2, 4, 6, 8) (E=8) and key (2, 4, 5, 16) (E=16)",
    ),
    "k/v lengths differ": (
        (q, k, torch.randn(2, 4, 7, 8)),
        {},
        ValueError,
        "key and value must have the same length S, got key (2, 4, 5, 8) (S=5) and value (2, 4, 7, 8) (S=7)",
    ),
    "batch differs": (
        (q, *qkv(B=3)[1:]),
        {},
        ValueError,
        "query (2, 4, 6, 8) and key (3, 4, 5, 8) must have the same batch dimensions",
    ),
    "mask shape": (
        (q, k, v),
        {"attn_mask": torch.ones(6, 4, dtype=torch.bool)},
        ValueError,
        "attn_mask of shape (6, 4) does not broadcast to the attention scores (2, 4, 6, 5) = (..., H, L, S)",
    ),
    "mask rank too high": (
        (q, k, v),
        {"attn_mask": torch.ones(1, 2, 4, 6, 5, dtype=torch.bool)},
        ValueError,
        "attn_mask of shape (1, 2, 4, 6, 5) does not broadcast",
    ),
    "mask dtype int": (
        (q, k, v),
        {"attn_mask": torch.ones(6, 5, dtype=torch.int64)},
        TypeError,
        "attn_mask has dtype torch.int64 but query has torch.float32; pass a bool mask (True = may attend)",
    ),
    "mask dtype other float": (
        (q, k, v),
        {"attn_mask": torch.zeros(6, 5, dtype=torch.float64)},
        TypeError,
        "e.g. attn_mask.to(query.dtype)",
    ),
    "mask not a tensor": (
        (q, k, v),
        {"attn_mask": [[True]]},
        TypeError,
        "attn_mask must be a torch.Tensor or None",
    ),
    "is_causal with mask": (
        (q, k, v),
        {"attn_mask": torch.ones(6, 5, dtype=torch.bool), "is_causal": True},
        ValueError,
        "attn_mask and is_causal=True were both given; pass one of them",
    ),
    "dropout 1": ((q, k, v), {"dropout_p": 1.0}, ValueError, "dropout_p must be in [0, 1), got 1.0"),
    "dropout negative": ((q, k, v), {"dropout_p": -0.1}, ValueError, "dropout_p must be in [0, 1), got -0.1"),
    "dropout type": (
        (q, k, v),
        {"dropout_p": "0.1"},
        TypeError,
        "dropout_p must be a float in [0, 1), got str",
    ),
    "is_causal type": ((q, k, v), {"is_causal": 1}, TypeError, "is_causal must be a bool, got int 1"),
    "scale type": ((q, k, v), {"scale": "2"}, TypeError, "scale must be a float or None, got str"),
    "scale nan": ((q, k, v), {"scale": float("nan")}, ValueError, "scale must be finite, got nan"),
    "gqa not enabled": (
        qkv(H=8, Hk=2),
        {},
        ValueError,
        "query has 8 heads but key/value have 2; pass enable_gqa=True",
    ),
    "gqa heads do not divide": (
        qkv(H=8, Hk=3),
        {"enable_gqa": True},
        ValueError,
        "enable_gqa=True needs the query heads (8) to be a multiple of the key/value heads (3)",
    ),
    "mixed dtypes": (
        (q, k.double(), v),
        {},
        TypeError,
        "key has dtype torch.float64 but query has torch.float32; cast all three to one dtype",
    ),
    "integer dtype": (
        (q.long(), k.long(), v.long()),
        {},
        TypeError,
        "query must have a floating-point dtype, got torch.int64",
    ),
    "mixed devices": (
        (q, k.to("meta"), v),
        {},
        ValueError,
        "key is on meta but query is on cpu; move them to one device, e.g. key.to(query.device)",
    ),
    "mask device": (
        (q, k, v),
        {"attn_mask": torch.ones(6, 5, dtype=torch.bool, device="meta")},
        ValueError,
        "attn_mask is on meta but query is on cpu",
    ),
    "not a tensor": ((q.tolist(), k, v), {}, TypeError, "query must be a torch.Tensor, got list"),
    "nested and dense mixed": (
        (jagged([3, 4]), k, v),
        {},
        ValueError,
        "key is a dense tensor but another input is nested",
    ),
    "nested not transposed": (
        (jagged([3, 4]).transpose(1, 2),) * 3,
        {},
        ValueError,
        "nested query must have shape (B, H, j, E) with the ragged dim at 2, got (2, j",
    ),
    "nested with mask": (
        (jagged([3, 4]),) * 3,
        {"attn_mask": torch.ones(4, 4, dtype=torch.bool)},
        ValueError,
        "attn_mask: a mask tensor is not supported with nested inputs; use is_causal=True",
    ),
    "nested batch differs": (
        (jagged([3, 4]), jagged([3, 4, 5]), jagged([3, 4, 5])),
        {},
        ValueError,
        "nested key holds 3 sequences but query holds 2",
    ),
    "nested k/v lengths differ": (
        (jagged([3, 4]), jagged([3, 4]), jagged([3, 5])),
        {},
        ValueError,
        "key and value must have the same sequence lengths, got key lengths [3, 4] and value lengths [3, 5]",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("entry", [kernels.scaled_dot_product_attention, kernels.explain], ids=["sdpa", "explain"])
def test_error_message(case, entry):
    args, kwargs, error, message = CASES[case]
    with pytest.raises(error, match=re.escape(message)):
        entry(*args, **kwargs)


def test_nested_with_holes():
    base = torch.randn(2, 6, 2, 8)
    holes = torch.nested.narrow(base, 1, torch.tensor([0, 1]), torch.tensor([3, 4]), layout=torch.jagged)
    t = holes.transpose(1, 2)
    with pytest.raises(ValueError, match=re.escape("nested query has holes") + ".*call query.contiguous"):
        kernels.scaled_dot_product_attention(t, t, t)


def test_valid_edge_values_are_accepted():
    """The boundaries of the contract are not errors: dropout 0, scale 0, a 0-d float mask."""
    kernels.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=0.0)
    out = kernels.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(0.5))
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
