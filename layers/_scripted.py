"""What TorchScript compiles for `layers.CausalSelfAttention` (see `layers.scripting`).

No ``from __future__ import annotations`` here: TorchScript reads these annotations as types, not strings.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ScriptedCausalSelfAttention(nn.Module):
    """The same math as `layers.CausalSelfAttention` on dense inputs, with torch's SDPA."""

    num_heads: int
    dropout: float
    is_causal: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, embed = x.shape
        qkv = self.c_attn(x).view(batch, length, 3, self.num_heads, embed // self.num_heads)
        q, k, v = qkv.unbind(2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, is_causal=self.is_causal
        )
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(batch, length, embed)))
