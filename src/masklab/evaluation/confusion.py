"""Pixel confusion matrix of semantic predictions, accumulated over a dataset; PNG and CSV output.

Rows are ground-truth classes, columns predicted classes; pixels whose ground truth is
``ignore_index`` are skipped, as in :class:`~masklab.evaluation.semantic.IoUMetric`, so the diagonal
sum over the matrix total equals its ``aAcc``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from masklab.errors import DataError
from masklab.evaluation.ground_truth import semantic_ground_truth
from masklab.evaluation.semantic import pixel_pair_counts
from masklab.structures.batch import Batch
from masklab.structures.predictions import SemanticPrediction
from masklab.structures.sample import SampleMeta


def confusion_counts(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(C, C) int64 counts of (ground truth, prediction) pairs over the pixels of one image.

    Ground-truth values outside ``[0, C)`` (ignore) and out-of-range predictions are not counted.
    The same histogram as :func:`~masklab.evaluation.semantic.intersect_and_union`, without its
    out-of-range row and column.
    """
    return pixel_pair_counts(pred, label, num_classes, ignore_index)[:num_classes, :num_classes].clone()


def ground_truth(meta: SampleMeta, batch: Batch | None, index: int) -> torch.Tensor:
    """The original-resolution ground truth of a prediction, in training label space."""
    return semantic_ground_truth(meta, batch, index, "the confusion matrix")


class ConfusionMatrix:
    """Accumulates a dataset-level pixel confusion matrix (an evaluator: reset/process/compute).

    Args:
        num_classes: number of classes.
        class_names: names for the CSV and the figure (default "0", "1", ...).
        ignore_index: ground-truth label that is skipped.
    """

    def __init__(
        self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = 255
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise DataError(f"ConfusionMatrix: {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        )
        self.ignore_index = ignore_index
        self.reset()

    metric_description = "pixel confusion matrix: rows ground truth, columns prediction, original resolution"

    def reset(self) -> None:
        """Forget every processed image."""
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._reduced: torch.Tensor | None = None

    def process(self, batch: Batch | None, predictions: list[SemanticPrediction]) -> None:
        """Add each prediction's counts against its ground truth."""
        for i, pred in enumerate(predictions):
            label = ground_truth(pred.meta, batch, i)
            self.matrix += confusion_counts(pred.label_map, label, self.num_classes, self.ignore_index)

    def reduced(self) -> torch.Tensor:
        """The matrix summed over ranks, as of the last :meth:`compute` (a collective on every rank);
        without a process group, the local matrix."""
        if self._reduced is not None:
            return self._reduced
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            raise RuntimeError("ConfusionMatrix.compute() must run on every rank before reading the matrix")
        return self.matrix.clone()

    def compute(self) -> dict[str, float]:
        """``aAcc`` (diagonal over total) of the matrix summed over ranks; call it on every rank."""
        import torch.distributed as dist

        m = self.matrix.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(m)
        self._reduced = m
        total = int(m.sum())
        return {"aAcc": float(m.diagonal().sum()) / total if total else float("nan")}

    def format_report(self) -> str:
        """The five largest off-diagonal confusions, as ``gt -> pred: pixels (% of gt)``."""
        m = self.reduced()
        off = m.clone()
        off.fill_diagonal_(0)
        rows = m.sum(1)
        lines = ["most confused (ground truth -> prediction):"]
        for flat in torch.argsort(off.flatten(), descending=True)[:5].tolist():
            r, c = divmod(flat, self.num_classes)
            if off[r, c] == 0:
                break
            share = 100.0 * float(off[r, c]) / float(rows[r])
            lines.append(
                f"  {self.class_names[r]} -> {self.class_names[c]}: {int(off[r, c])} px ({share:.1f} %)"
            )
        return "\n".join(lines)

    def save(self, out_dir: str | Path, normalize: bool = True) -> tuple[Path, Path]:
        """Write ``confusion_matrix.png`` and ``confusion_matrix.csv`` (raw counts) into ``out_dir``."""
        from masklab.visualization.plots import plot_confusion_matrix

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        m = self.reduced().numpy()
        csv_path = write_csv(m, self.class_names, out / "confusion_matrix.csv")
        png_path = plot_confusion_matrix(
            m, self.class_names, out / "confusion_matrix.png", normalize=normalize
        )
        return png_path, csv_path


def write_csv(matrix: object, class_names: Sequence[str], path: str | Path) -> Path:
    """A header row ``gt\\pred, <names>`` then one row per ground-truth class of raw pixel counts."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gt\\pred", *class_names])
        for name, row in zip(class_names, matrix, strict=True):  # type: ignore[call-overload]
            writer.writerow([name, *(int(v) for v in row)])
    return p


class WithConfusion:
    """Runs an evaluator and a :class:`ConfusionMatrix` on the same predictions; reports the first."""

    def __init__(self, evaluator: object, confusion: ConfusionMatrix) -> None:
        self.evaluator = evaluator
        self.confusion = confusion

    def __getattr__(self, name: str) -> object:
        return getattr(self.evaluator, name)  # format_report, metric_description, ...

    def reset(self) -> None:
        self.evaluator.reset()  # type: ignore[attr-defined]
        self.confusion.reset()

    def process(self, batch: Batch | None, predictions: list[SemanticPrediction]) -> None:
        self.evaluator.process(batch, predictions)  # type: ignore[attr-defined]
        self.confusion.process(batch, predictions)

    def compute(self) -> dict[str, float]:
        self.confusion.compute()  # a collective: every rank takes part
        return self.evaluator.compute()  # type: ignore[attr-defined,no-any-return]


def with_confusion(evaluator: object, meta: object, task: str) -> WithConfusion:
    """``evaluator`` plus a confusion matrix over ``meta``'s classes (semantic tasks only)."""
    from masklab.errors import ConfigError

    if task != "semantic" or meta is None:
        raise ConfigError(f"--confusion: needs a semantic segmentation config, this one has task {task!r}")
    confusion = ConfusionMatrix(
        meta.num_classes,  # type: ignore[attr-defined]
        meta.classes,  # type: ignore[attr-defined]
        meta.ignore_index,  # type: ignore[attr-defined]
    )
    return WithConfusion(evaluator, confusion)
