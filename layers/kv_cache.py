"""``KVCache``: preallocated keys and values for incremental decoding, one per attention module.

Keys and values of the tokens seen so far are kept in ``(B, max_len, H, D)`` buffers, with how many slots each
sequence uses in ``lengths``, a ``(B,)`` tensor on the buffers' device: appending new tokens and attending over the
cache read nothing on the host, so a compiled decoding step serves every position. An append past ``max_len`` is
refused before writing (`ArgumentError`); off the CPU the check uses a count of the longest length kept on the host
(a nested prompt reads the lengths once), so a decoding step still reads nothing. Sequences of different prompt
lengths decode together without padding (their lengths differ, and a nested prompt appends a different number of
tokens to each). A decoder layer's cross-attention keeps the keys/values of its ``memory`` here too, computed once.

Example, run by the test suite:

```python
import torch
import layers

attn = layers.CausalSelfAttention(num_heads=4, embed_dimension=32, is_causal=True).eval()
x = torch.randn(2, 10, 32)
cache = layers.KVCache(batch_size=2, max_len=16, num_heads=4, head_dim=8)
first = attn(x[:, :6], kv_cache=cache)  # the prompt
steps = [attn(x[:, t : t + 1], kv_cache=cache) for t in range(6, 10)]  # one token at a time
torch.testing.assert_close(torch.cat([first, *steps], dim=1), attn(x), rtol=1e-4, atol=1e-5)
```
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import kernels
from kernels.decode import decode_attention_unchecked

from .errors import ArgumentError

__all__ = ["KVCache", "cached_attention", "generate", "sample"]


class KVCache:
    """Keys and values of up to ``max_len`` tokens for each of ``batch_size`` sequences (see the module).

    Args:
        batch_size: sequences decoded together.
        max_len: token slots per sequence (prompt and generated tokens).
        num_heads: key/value heads of the attention.
        head_dim: the attention's head dim.
        dtype: of the buffers (default: torch's default dtype).
        device: of the buffers (default: the CPU).

    Attributes:
        keys, values: ``(batch_size, max_len, num_heads, head_dim)`` buffers.
        lengths: ``(batch_size,)`` int64: slots in use per sequence (changed by the appends and `reset` only: the
            cache also counts on the host, so that a decoding step on a GPU reads nothing back).
        memory: the cross-attention keys and values of a decoder layer's memory, once computed (else None).
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        for name, value in (("batch_size", batch_size), ("max_len", max_len), ("num_heads", num_heads),
                            ("head_dim", head_dim)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ArgumentError(f"KVCache: {name} must be a positive int, got {value!r}")
        shape = (batch_size, max_len, num_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.memory: tuple[torch.Tensor, torch.Tensor] | None = None
        self._on_cpu = self.keys.device.type == "cpu"  # where reading the lengths costs no synchronisation
        self.started = False  # whether tokens were added (host-side: no read of the lengths)
        self.ragged = False  # whether sequences may hold different numbers of tokens (a nested prompt was added)
        # the longest sequence's length, kept on the host by eager appends: off the CPU a decoding step checks the
        # room against it, and, while every sequence is as long, writes one slice there, without reading the
        # lengths. An append inside torch.compile is not counted: it marks the count unknown until the lengths are
        # read again (a nested prompt) or the cache is reset.
        self._longest = 0
        self._counted = True

    @property
    def batch_size(self) -> int:
        return self.keys.size(0)

    @property
    def max_len(self) -> int:
        return self.keys.size(1)

    def reset(self) -> None:
        """Forget every token (and the memory), keeping the buffers."""
        self.lengths.zero_()
        self.memory = None
        self.started = self.ragged = False
        self._longest, self._counted = 0, True

    def __repr__(self) -> str:
        b, n, h, d = self.keys.shape
        return f"KVCache(batch_size={b}, max_len={n}, num_heads={h}, head_dim={d}, dtype={self.keys.dtype})"

    def _check(self, k: torch.Tensor, heads: int, head_dim: int) -> None:
        if (heads, head_dim) != tuple(self.keys.shape[2:]):
            raise ArgumentError(
                f"the attention has {heads} key/value heads of dim {head_dim} but the cache holds "
                f"{tuple(self.keys.shape[2:])}; build KVCache(..., num_heads={heads}, head_dim={head_dim})"
            )
        if k.dtype != self.keys.dtype or k.device != self.keys.device:
            raise ArgumentError(
                f"new keys are {k.dtype} on {k.device} but the cache holds {self.keys.dtype} on {self.keys.device}; "
                "build the cache with the model's dtype and device"
            )

    def append(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Add the same number ``T`` of new tokens to every sequence: ``k``/``v (B, T, H, D)``. Returns the lengths
        before (``(B,)``)."""
        before = self.lengths.clone()
        self._append(k, v)
        return before

    def _append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int] | None:
        """`append` without the lengths before (the attention modules': a decoding step copies no lengths). Returns,
        on CPU, the shortest and longest lengths after it (the attention then reads nothing again); else None."""
        B, T, H, D = k.shape
        self._check(k, H, D)
        if self.batch_size != B:
            raise ArgumentError(f"the cache holds {self.batch_size} sequences but {B} were given")
        if torch.compiler.is_compiling():
            self._counted = False  # the compiled step's appends are not counted on the host
            self._scatter(k, v)
            return None
        if self._on_cpu:  # reading the lengths costs nothing here (one operation): the count is exact again
            counts = self.lengths.tolist()
            shortest, self._longest, self._counted = min(counts), max(counts), True
            as_long = shortest == self._longest
            in_use = (shortest + T, self._longest + T)  # after this append
        else:  # on a GPU, what the host counted: nothing is read back
            as_long, in_use = self._counted and not self.ragged, None
        start = self._longest
        if self._counted:
            self._check_room(start + T)
            self._longest = start + T
        if not as_long:
            self._scatter(k, v)
            return in_use
        # every sequence holds `start` tokens (the usual decoding step): one slice copy instead of index arithmetic
        # and a scatter (on a GPU several kernel launches fewer)
        self.keys[:, start : start + T] = k
        self.values[:, start : start + T] = v
        self.lengths += T
        self.started = True
        return in_use

    def _scatter(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``k``/``v (B, T, H, D)`` after each sequence's own length (lengths read on the device only)."""
        B, T = k.shape[:2]
        rows = torch.arange(B, device=k.device)[:, None].expand(B, T)
        slots = self.lengths[:, None] + torch.arange(T, device=k.device)  # (B, T), before the lengths grow
        self.keys.index_put_((rows, slots), k)
        self.values.index_put_((rows, slots), v)
        self.lengths += T
        self.started = True

    def append_packed(self, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Add a different number of tokens to each sequence: packed ``k``/``v (T, H, D)`` with ``offsets (B + 1,)``
        (a nested prompt). Returns the lengths before."""
        T, H, D = k.shape
        self._check(k, H, D)
        if offsets.numel() != self.batch_size + 1:
            raise ArgumentError(f"the cache holds {self.batch_size} sequences but {offsets.numel() - 1} were given")
        counts = offsets.diff()
        if torch.compiler.is_compiling():
            self._counted = False
        else:  # a prompt, not a decoding step: reading the lengths once is fine (and makes the count exact again)
            longest = int((self.lengths + counts).max())
            self._check_room(longest)
            self._longest, self._counted = longest, True
        before = self.lengths.clone()
        rows = torch.repeat_interleave(torch.arange(self.batch_size, device=k.device), counts, output_size=T)
        slots = before[rows] + torch.arange(T, device=k.device) - offsets[rows]  # (T,)
        self.keys.index_put_((rows, slots), k)
        self.values.index_put_((rows, slots), v)
        self.lengths += counts
        self.started = self.ragged = True
        return before

    def _check_room(self, longest: int) -> None:
        """Refuse, before writing, an append that would make a sequence ``longest`` tokens long past ``max_len``."""
        if longest > self.max_len:
            raise ArgumentError(  # reading the lengths costs a sync on a GPU, here only where the append is refused
                f"the cache is full: max_len={self.max_len}, in use {self.lengths.tolist()}, and this append would "
                f"make a sequence {longest} tokens long; build a larger KVCache, or reset() it and feed the context "
                "again"
            )

    @classmethod
    def for_decoder(cls, decoder, batch_size: int, max_len: int) -> list[KVCache]:
        """One cache per layer of a `TransformerDecoder` (its heads, head dim, dtype and device)."""
        caches = []
        for layer in decoder.layers:
            attn = layer.self_attn
            weight = attn.in_proj_weight if attn.in_proj_weight is not None else attn.q_proj_weight
            caches.append(cls(batch_size, max_len, attn.num_heads, attn.head_dim, weight.dtype, weight.device))
        return caches

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values as ``(B, H, max_len, D)`` views (what the attention functions take)."""
        return self.keys.transpose(1, 2), self.values.transpose(1, 2)

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The keys and values in use, packed ``(sum lengths, H, D)``, and their offsets ``(B + 1,)`` (reads the
        lengths on the host: for ragged continuations, not for decoding steps)."""
        keep = torch.arange(self.max_len, device=self.lengths.device) < self.lengths[:, None]  # (B, max_len)
        offsets = torch.nn.functional.pad(self.lengths.cumsum(0), (1, 0))
        return self.keys[keep], self.values[keep], offsets


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Append the new tokens' ``k``/``v`` to ``cache`` and attend from their queries over everything cached,
    causally (bottom-right aligned). Dense ``(B, T, H, D)`` (the same ``T`` new tokens per sequence), or packed
    ``(T, H, D)`` with ``offsets (B + 1,)``; the output has ``q``'s layout."""
    if offsets is None:
        _check_queries(q, k)
        in_use = cache._append(k, v)
        keys, values = cache.view()  # (B, H, max_len, D)
        # validated here and by the append (a decoding step is small: checking twice is a measurable share of it)
        out = decode_attention_unchecked(q.transpose(1, 2), keys, values, cache.lengths, None, True, in_use)
        return out.transpose(1, 2)  # (B, T, H, D)
    fresh = not cache.ragged and not cache.started
    cache.append_packed(k, v, offsets)
    if fresh:  # a prompt into an empty cache: its own tokens are all the keys
        return kernels.varlen_attention(q, k, v, offsets, offsets, is_causal=True, enable_gqa=True)
    keys, values, key_offsets = cache.packed()  # a ragged continuation: each sequence's cached keys
    band = kernels.sliding_window(None, None, None, 0, lower_right=True)
    return kernels.varlen_attention(q, keys, values, offsets, key_offsets, attn_mask=band, enable_gqa=True)


def _check_queries(q: torch.Tensor, k: torch.Tensor) -> None:
    """What `kernels.decode_attention` would check of the queries, given keys the cache checked."""
    if q.dim() != 4 or q.shape[:2] != k.shape[:2] or q.size(-1) != k.size(-1) or q.size(2) % k.size(2):
        raise ArgumentError(
            f"queries {tuple(q.shape)} do not fit the new keys {tuple(k.shape)}: both (B, T, heads, head_dim), "
            "with the same B, T and head_dim, and a multiple of the key heads as query heads"
        )
    if q.dtype != k.dtype or q.device != k.device:
        raise ArgumentError(f"queries are {q.dtype} on {q.device} but keys {k.dtype} on {k.device}")


@torch.no_grad()
def generate(
    model: Callable[..., torch.Tensor],
    new_caches: Callable[[int], list[KVCache]],
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue token ids ``idx (B, T)`` by ``max_new_tokens`` tokens -> ``(B, T + max_new_tokens)``.

    ``model(idx)`` gives logits ``(B, T, V)``; ``model(idx, caches)`` the logits of new tokens appended to
    ``caches`` (made by ``new_caches(batch_size)``). Sampling: greedy at ``temperature=0``, else top-k.

    The context is at most ``block_size`` tokens: when it would grow past that, it restarts from the last
    ``block_size // 2`` tokens (with caches: one new prefill). With or without the caches the model sees the same
    tokens at the same positions, so both give the same logits; the caches compute one token per step.

    Runs under ``torch.no_grad``, not ``torch.inference_mode``: inference mode measured ~5% faster here, but every
    tensor a model creates in it and keeps (a lazily built table of positions, say) would refuse a later training
    step ("inference tensors cannot be saved for backward").
    """
    start, caches = 0, None
    for _ in range(max_new_tokens):
        if idx.size(1) - start >= block_size:
            start, caches = idx.size(1) - block_size // 2, None  # the context restarts
        if not use_cache:
            logits = model(idx[:, start:])[:, -1]
        elif caches is None:
            caches = new_caches(idx.size(0))
            logits = model(idx[:, start:], caches)[:, -1]
        else:
            # a fresh tensor: the slice's stride grows with idx, and a compiled model would recompile at every step
            logits = model(idx[:, -1:].clone(memory_format=torch.contiguous_format), caches)[:, -1]
        idx = torch.cat([idx, sample(logits, temperature, top_k)], dim=1)
    return idx


def sample(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The next token ``(B, 1)`` from ``logits (B, V)``: argmax at temperature 0, else top-k sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)
