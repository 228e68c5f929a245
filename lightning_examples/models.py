"""LightningModules that train this package's layers.

- `CharGPT`: a byte-level GPT (nanoGPT's block: ``layers.CausalSelfAttention`` + MLP), with perplexity and
  text generation.
- `SequenceClassifier`: ``layers.TransformerEncoder`` on jagged nested batches, with accuracy.

Both take ``compile``: when True the backbone (a plain ``nn.Module``) is compiled in place inside
``configure_model`` with ``nn.Module.compile()``, so parameter names and checkpoint keys stay the same
(no ``_orig_mod``), and losses, metrics and logging run outside the compiled region. A checkpoint from a
compiled run loads into an eager model and back.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.utilities import rank_zero_info

import layers
from layers.kv_cache import generate

__all__ = ["CharGPT", "GPTBackbone", "SequenceClassifier"]


class Block(nn.Module):
    """Pre-norm transformer block (nanoGPT): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = layers.CausalSelfAttention(n_head, n_embd, bias=True, is_causal=True, dropout=dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, kv_cache: layers.KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache=kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPTBackbone(nn.Module):
    """Token + position embeddings, ``n_layer`` blocks, final norm and a tied output head.

    ``idx (B, T)`` byte ids -> logits ``(B, T, vocab_size)``.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, kv_caches: list[layers.KVCache] | None = None) -> torch.Tensor:
        """``idx (B, T)`` -> logits ``(B, T, V)``. With ``kv_caches`` (`new_caches`), ``idx`` holds the new tokens:
        their positions continue after the cached ones, and each block attends over its cache."""
        pos = torch.arange(idx.size(1), device=idx.device)
        if kv_caches is not None:
            pos = kv_caches[0].lengths[:, None] + pos  # (B, T): each sequence's own positions
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if kv_caches is None else kv_caches[i])
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def new_caches(self, batch_size: int) -> list[layers.KVCache]:
        """Empty key/value caches for `forward`, one per block, ``block_size`` tokens each."""
        attn = self.blocks[0].attn
        weight = self.wte.weight
        return [
            layers.KVCache(
                batch_size,
                self.block_size,
                attn.num_heads,
                attn.embed_dimension // attn.num_heads,
                weight.dtype,
                weight.device,
            )
            for _ in self.blocks
        ]

    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 40,
        use_cache: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        """Continue ``idx (B, T)`` by ``max_new_tokens`` tokens (``temperature=0``: greedy) with key/value caches;
        see `layers.kv_cache.generate` (the context policy, and why cached and uncached give the same logits)."""
        return generate(self, self.new_caches, idx, max_new_tokens, self.block_size, temperature, top_k, use_cache)


class CharGPT(pl.LightningModule):
    """Byte-level GPT on `lightning_examples.data.StdlibTextDataModule`.

    Args:
        block_size: context length (positions).
        n_layer: depth (blocks).
        n_head: attention heads.
        n_embd: width.
        dropout: in attention, MLP and embeddings.
        lr: AdamW's peak learning rate (linear warm-up, then cosine decay over the run).
        weight_decay: AdamW's.
        warmup_steps: steps of the linear warm-up.
        compile: compile the backbone with ``torch.compile`` (in ``configure_model``).
        sample_tokens: bytes to generate at the end of ``fit`` (0: none).
        vocab_size: 256 for bytes.
    """

    def __init__(
        self,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 50,
        compile: bool = False,
        sample_tokens: int = 200,
        vocab_size: int = 256,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = GPTBackbone(vocab_size, block_size, n_layer, n_head, n_embd, dropout)
        # Perplexity = exp(token-weighted mean cross-entropy): a weighted mean, then exp at the end.
        self.val_nll = torchmetrics.MeanMetric()
        self.sample: str | None = None

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.backbone.compile()  # in place: the module keeps its name and its state_dict keys

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.backbone(idx)

    def tokens_in_batch(self, batch) -> int:
        return batch[0].numel()

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.val_nll.update(self._loss(batch), weight=batch[1].numel())

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()  # synchronised across processes by torchmetrics
        self.val_nll.reset()
        self.log("val/loss", nll, prog_bar=True)
        self.log("val/perplexity", nll.clamp(max=50.0).exp(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            betas=(0.9, 0.95),
        )
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = min(self.hparams.warmup_steps, total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @torch.no_grad()
    def generate(
        self, prompt: bytes, max_new_tokens: int, temperature: float = 0.8, top_k: int = 40, use_cache: bool = True
    ) -> str:
        """Continue ``prompt`` byte by byte (sampling with ``temperature`` and ``top_k``; 0: greedy) with the
        backbone's key/value caches (`GPTBackbone.generate`); returns the text."""
        was_training = self.training
        self.eval()
        idx = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
        idx = self.backbone.generate(idx, max_new_tokens, temperature, top_k, use_cache)
        self.train(was_training)
        return bytes(idx[0].tolist()).decode("utf-8", errors="replace")

    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        lines = []
        perplexity = self.trainer.callback_metrics.get("val/perplexity")
        if perplexity is not None:
            lines.append(f"Validation perplexity: {float(perplexity):.2f} per byte (lower is better)")
            unigram = getattr(self.trainer.datamodule, "unigram_entropy", None)
            if unigram is not None:
                lines.append(
                    f"  for comparison, byte frequencies alone (a unigram model) give {math.exp(unigram()):.2f}"
                )
        if self.hparams.sample_tokens > 0:
            torch.manual_seed(0)
            self.sample = self.generate(b"def ", self.hparams.sample_tokens)
            lines += ["A sample from the model (prompt 'def '):", "-" * 60, self.sample, "-" * 60]
        if lines:
            rank_zero_info("\n" + "\n".join(lines))


class ClassifierBackbone(nn.Module):
    """Embedding, ``layers.TransformerEncoder`` and a linear head over the mean of each sequence.

    ``tokens``: a jagged nested tensor ``(B, j)`` of ids -> logits ``(B, num_classes)``.
    """

    def __init__(
        self, vocab_size: int, num_classes: int, d_model: int, nhead: int, num_layers: int, dim_feedforward: int,
        dropout: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        layer = layers.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.encoder = layers.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.nested.nested_tensor_from_jagged(self.embed(tokens.values()), offsets=tokens.offsets())  # (B, j, D)
        h = self.encoder(x).values()  # (T, D): the tokens of all sequences, back to back
        lengths = tokens.offsets().diff()  # (B,)
        # Mean over each sequence's own tokens (the nested tensor's mean has no backward in torch 2.13).
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=h.device), lengths)  # (T,)
        sums = h.new_zeros(len(lengths), h.size(-1)).index_add(0, owner, h)  # (B, D)
        return self.head(sums / lengths.clamp(min=1)[:, None].to(h.dtype))  # (B, num_classes)


class SequenceClassifier(pl.LightningModule):
    """Classifies variable-length sequences fed as jagged nested tensors (no padding), with accuracy.

    Args:
        vocab_size: as the data module's.
        num_classes: as the data module's.
        d_model: the encoder's width.
        nhead: the encoder's attention heads.
        num_layers: encoder layers.
        dim_feedforward: the encoder's feed-forward width.
        dropout: the encoder's dropout.
        lr: AdamW learning rate.
        compile: compile the backbone with ``torch.compile`` (in ``configure_model``).
    """

    def __init__(
        self,
        vocab_size: int = 32,
        num_classes: int = 4,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.0,
        lr: float = 1e-3,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = ClassifierBackbone(
            vocab_size, num_classes, d_model, nhead, num_layers, dim_feedforward, dropout
        )
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.backbone.compile()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone(tokens)

    def tokens_in_batch(self, batch) -> int:
        return batch[0].values().numel()

    def _step(self, batch, metric: torchmetrics.Metric, stage: str) -> torch.Tensor:
        tokens, labels = batch
        logits = self(tokens)
        loss = F.cross_entropy(logits, labels)
        metric.update(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=labels.numel())
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=labels.numel())
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_acc, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.val_acc, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
