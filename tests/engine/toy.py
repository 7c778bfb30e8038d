"""A tiny model, loader and evaluator following the masklab contracts, for engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from masklab.structures import Batch, SampleMeta, SemanticPrediction


class ToyPreprocessor(nn.Module):
    """Moves the batch to the model's device (the real one also normalises and pads)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, batch: Batch, training: bool) -> Batch:
        return batch.to(self.anchor.device)


class ToyModel(nn.Module):
    """Conv + BN + dropout + 1x1 classifier; two loss terms and a logged-only accuracy."""

    def __init__(self, num_classes: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.data_preprocessor = ToyPreprocessor()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Conv2d(4, num_classes, 1)
        self.nan_at_calls: set[int] = set()
        self.calls = 0

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.cls(self.drop(torch.relu(self.norm(self.conv(images)))))

    def forward(self, batch: Batch, mode: str = "loss") -> dict[str, torch.Tensor] | list[SemanticPrediction]:
        logits = self.logits(batch.images)
        self.logits_dtype = logits.dtype  # lets tests see whether autocast was active
        if mode == "predict":
            return [SemanticPrediction(label_map=lg.argmax(0), meta=m) for lg, m in zip(logits, batch.metas)]
        assert batch.semantic is not None
        self.calls += 1
        ce = nn.functional.cross_entropy(logits, batch.semantic)
        if self.calls in self.nan_at_calls:
            ce = ce * float("nan")
        reg = 1e-3 * sum((p**2).sum() for p in self.cls.parameters())
        acc = (logits.argmax(1) == batch.semantic).float().mean()
        return {"loss_ce": ce, "loss_reg": reg, "acc_seg": acc}


def make_batch(gen: torch.Generator, batch_size: int = 2, size: int = 8, num_classes: int = 3) -> Batch:
    images = torch.rand(batch_size, 3, size, size, generator=gen)
    # A learnable target: the class follows the brightest channel.
    semantic = images.argmax(1) % num_classes
    metas = [
        SampleMeta(image_id=i, ori_shape=(size, size), img_shape=(size, size)) for i in range(batch_size)
    ]
    return Batch(images=images, metas=metas, semantic=semantic)


def toy_loader(start: int = 0, seed: int = 0, batch_size: int = 2) -> Iterator[Batch]:
    """Infinite, deterministic: batch ``k`` depends only on ``seed`` and ``k`` (like InfiniteSampler)."""
    k = start
    while True:
        gen = torch.Generator().manual_seed(seed * 100_003 + k)
        yield make_batch(gen, batch_size)
        k += 1


class PixelAccuracy:
    """A minimal evaluator: pixel accuracy over ``batch.semantic``."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def reset(self) -> None:
        self.correct = self.total = 0

    def process(self, batch: Batch, predictions: list[SemanticPrediction]) -> None:
        assert batch.semantic is not None
        for pred, gt in zip(predictions, batch.semantic):
            self.correct += int((pred.label_map == gt).sum())
            self.total += gt.numel()

    def compute(self) -> dict[str, float]:
        return {"aAcc": self.correct / max(1, self.total)}
