"""Data for the examples, made on the machine: nothing is downloaded.

- `StdlibTextDataModule`: the Python standard library's own ``.py`` files (real text, present wherever
  Python is), read in a fixed order as UTF-8 bytes: a byte-level (256-symbol) character corpus with a
  deterministic train/val split.
- `VarLenClassificationDataModule`: synthetic variable-length token sequences whose label depends on the
  whole sequence, batched as jagged nested tensors.
"""

from __future__ import annotations

import math
import pathlib
import sysconfig

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["StdlibTextDataModule", "VarLenClassificationDataModule", "stdlib_corpus"]

VOCAB_SIZE = 256  # bytes


def stdlib_corpus(max_bytes: int) -> torch.Tensor:
    """The first ``max_bytes`` bytes of the standard library's sources, files in sorted path order, as uint8."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    chunks, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if total == 0:
        raise FileNotFoundError(f"no Python source files found under {root}")
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).clone()


class _Windows(Dataset):
    """Non-overlapping windows of ``block_size + 1`` bytes: input ``x`` and the next-byte target ``y``."""

    def __init__(self, data: torch.Tensor, block_size: int) -> None:
        self.data, self.block_size = data, block_size
        self.count = (len(data) - 1) // block_size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i * self.block_size : (i + 1) * self.block_size + 1].long()
        return chunk[:-1], chunk[1:]


class StdlibTextDataModule(pl.LightningDataModule):
    """Next-byte prediction on the standard library's source code.

    Args:
        block_size: context length of each training window.
        batch_size: windows per batch.
        max_bytes: how much of the corpus to use (the first bytes, in sorted file order).
        val_fraction: the last part of the corpus, held out for validation (and test).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        block_size: int = 128,
        batch_size: int = 32,
        max_bytes: int = 2_000_000,
        val_fraction: float = 0.1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        corpus = stdlib_corpus(self.hparams.max_bytes)
        split = int(len(corpus) * (1 - self.hparams.val_fraction))
        self.train_data, self.val_data = corpus[:split], corpus[split:]
        if len(self.val_data) <= self.hparams.block_size + 1:
            raise ValueError(
                f"the validation split ({len(self.val_data)} bytes) is shorter than one window: "
                "raise max_bytes or val_fraction, or lower block_size"
            )

    def unigram_entropy(self) -> float:
        """Cross-entropy (nats per byte) of predicting validation bytes from the training byte frequencies."""
        self.setup()
        counts = torch.bincount(self.train_data.long(), minlength=VOCAB_SIZE).double() + 1.0  # add-one smoothing
        log_p = (counts / counts.sum()).log()
        return -log_p[self.val_data.long()].mean().item()

    def _loader(self, data: torch.Tensor, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(0) if shuffle else None
        return DataLoader(
            _Windows(data, self.hparams.block_size),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=shuffle,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_data, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_data, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class _VarLenSequences(Dataset):
    """Sequences of random lengths; the label is the marker token (1..num_classes) that occurs most often.

    Every position matters: the answer needs counts over the whole sequence (ties go to the smallest id).
    """

    def __init__(self, size: int, min_len: int, max_len: int, vocab_size: int, num_classes: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(size):
            length = int(torch.randint(min_len, max_len + 1, (), generator=gen))
            tokens = torch.randint(num_classes + 1, vocab_size, (length,), generator=gen)  # filler tokens
            markers = torch.rand(length, generator=gen) < 0.3
            tokens[markers] = torch.randint(1, num_classes + 1, (int(markers.sum()),), generator=gen)
            counts = torch.bincount(tokens, minlength=num_classes + 1)[1 : num_classes + 1]
            self.items.append((tokens, int(counts.argmax())))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.items[i]


def collate_jagged(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A jagged nested tensor of token ids ``(B, j)`` and the labels ``(B,)``."""
    tokens = torch.nested.nested_tensor([t for t, _ in batch], layout=torch.jagged)
    return tokens, torch.tensor([label for _, label in batch])


class VarLenClassificationDataModule(pl.LightningDataModule):
    """Synthetic variable-length classification, batched as jagged nested tensors (no padding anywhere).

    Args:
        num_classes: labels, and marker tokens ``1..num_classes``; the other ids up to ``vocab_size`` are filler.
        vocab_size: token ids ``0..vocab_size - 1`` (0 is never drawn).
        min_len: shortest sequence (lengths are uniform in ``[min_len, max_len]``).
        max_len: longest sequence.
        train_size: training sequences (fixed seeds: the same data every run).
        val_size: validation sequences.
        batch_size: sequences per batch.
    """

    def __init__(
        self,
        num_classes: int = 4,
        vocab_size: int = 32,
        min_len: int = 4,
        max_len: int = 96,
        train_size: int = 4096,
        val_size: int = 512,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        if vocab_size <= num_classes + 1:
            raise ValueError(f"vocab_size ({vocab_size}) must exceed num_classes + 1 ({num_classes + 1})")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        self.save_hyperparameters()
        self.chance = 1.0 / num_classes
        self.train_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        make = _VarLenSequences
        self.train_set = make(h.train_size, h.min_len, h.max_len, h.vocab_size, h.num_classes, seed=0)
        self.val_set = make(h.val_size, h.min_len, h.max_len, h.vocab_size, h.num_classes, seed=1)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(0)
        return DataLoader(
            self.train_set, self.hparams.batch_size, shuffle=True, generator=gen, collate_fn=collate_jagged
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.hparams.batch_size, collate_fn=collate_jagged)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def steps_per_epoch(self) -> int:
        return math.ceil(self.hparams.train_size / self.hparams.batch_size)
