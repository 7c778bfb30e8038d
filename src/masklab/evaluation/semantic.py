"""The IoU family of semantic metrics with MMSegmentation's ``IoUMetric`` rules.

Per image, over pixels whose ground truth is not ``ignore_index``, the per-class intersection,
union, predicted area and ground-truth area are counted at the original resolution. Over the
dataset the four histograms are *summed* (not averaged per image); per-class ratios follow, with
0/0 giving NaN, and the summaries are NaN-means, so a class absent from both ground truth and
prediction is excluded. Values are fractions in [0, 1] (MMSeg prints them x100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from masklab.config.registries import EVALUATORS
from masklab.errors import ConfigError, DataError
from masklab.evaluation.ground_truth import semantic_ground_truth
from masklab.structures.batch import Batch
from masklab.structures.predictions import SemanticPrediction
from masklab.structures.sample import SampleMeta

_METRICS = ("mIoU", "mDice", "mFscore")


@dataclass
class AreaStats:
    """Per-class pixel counts (each (C,) int64), summable over images and ranks."""

    intersect: torch.Tensor
    union: torch.Tensor
    pred_area: torch.Tensor
    label_area: torch.Tensor

    @classmethod
    def zeros(cls, num_classes: int) -> AreaStats:
        z = torch.zeros(num_classes, dtype=torch.int64)
        return cls(z.clone(), z.clone(), z.clone(), z.clone())

    def __iadd__(self, other: AreaStats) -> AreaStats:
        self.intersect += other.intersect
        self.union += other.union
        self.pred_area += other.pred_area
        self.label_area += other.label_area
        return self


# Ground-truth values up to this bound are histogrammed as rows directly; larger ones are folded first.
_MAX_DIRECT_BINS = 1 << 24


def pixel_pair_counts(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """(C+1, C+1) int64 counts of (ground truth, prediction) pairs over one image's non-ignored pixels.

    Rows are ground truth, columns prediction; row / column ``C`` collects values outside
    ``[0, C)``, so callers choose MMSeg's rules (:func:`intersect_and_union`) or drop them
    (:func:`masklab.evaluation.confusion.confusion_counts`). One histogram of
    ``label * (C+1) + pred`` serves every count: no per-class passes and no gather of the
    non-ignored pixels. CPU maps are counted by NumPy on views of the tensors (``torch.bincount``
    is several times slower there); other devices count in place and return the (small) result.
    """
    if pred.shape != label.shape:
        raise DataError(
            f"prediction {tuple(pred.shape)} and ground truth {tuple(label.shape)} differ in size"
        )
    n = num_classes
    pred, label = _index_dtype(pred.reshape(-1)), _index_dtype(label.reshape(-1).to(pred.device))
    if pred.dtype != label.dtype:
        pred, label = pred.long(), label.long()
    if pred.numel() == 0:
        return torch.zeros(n + 1, n + 1, dtype=torch.int64)
    on_cpu = pred.device.type == "cpu"
    p, g = (pred.numpy(), label.numpy()) if on_cpu else (pred, label)
    where = np.where if on_cpu else torch.where

    lo, hi = int(p.min()), int(p.max())
    if lo < 0 or hi >= n:
        p = where((p >= 0) & (p < n), p, n)
    lo, hi = int(g.min()), int(g.max())
    if lo >= 0 and (hi + 1) * (n + 1) <= _MAX_DIRECT_BINS:
        rows, ignore_row = hi + 1, ignore_index if 0 <= ignore_index <= hi else None
    else:  # negative or huge ground-truth values: fold them into row C first (ignore -> row C+1)
        g = where(g == ignore_index, n + 1, where((g >= 0) & (g < n), g, n))
        rows, ignore_row = n + 2, n + 1
    flat = g * (n + 1)
    flat += p
    minlength = max(rows, n + 1) * (n + 1)
    if on_cpu:
        counts = torch.from_numpy(np.bincount(flat, minlength=minlength))
    else:
        counts = torch.bincount(flat, minlength=minlength).cpu()
    counts = counts.to(torch.int64).reshape(-1, n + 1)
    if ignore_row is not None:
        counts[ignore_row] = 0
    joint = torch.zeros(n + 1, n + 1, dtype=torch.int64)
    joint[:n] = counts[:n]
    joint[n] = counts[n:].sum(0)
    return joint


def _index_dtype(t: torch.Tensor) -> torch.Tensor:
    """``t`` as int32 / int64 (kept when already one), so ``label * (C+1) + pred`` cannot overflow."""
    if t.dtype in (torch.int32, torch.int64):
        return t
    return t.long() if t.is_floating_point() else t.to(torch.int32)


def intersect_and_union(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> AreaStats:
    """Counts of one (H, W) prediction against its (H, W) ground truth.

    Pixels labelled ``ignore_index`` are skipped. As in MMSeg's ``IoUMetric`` (which masks only
    ``ignore_index`` and histograms each map over ``[0, C)``), a ground-truth value outside
    ``[0, C)`` is absent from the label area and the intersection but its pixel still counts in
    the predicted area, and an out-of-range prediction counts in the label area only.
    """
    joint = pixel_pair_counts(pred, label, num_classes, ignore_index)
    intersect = joint.diagonal()[:num_classes].clone()
    pred_area = joint[:, :num_classes].sum(0)
    label_area = joint[:num_classes].sum(1)
    return AreaStats(intersect, pred_area + label_area - intersect, pred_area, label_area)


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Elementwise ratio in float64 where 0/0 is NaN (and x/0 for x > 0 is NaN too, never happening here)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def area_to_metrics(
    stats: AreaStats, metrics: Sequence[str], beta: float = 1.0, nan_to_num: float | None = None
) -> dict[str, torch.Tensor]:
    """Per-class metrics (float64 (C,) tensors) plus ``aAcc`` (a 0-d tensor), MMSeg's formulas."""
    out: dict[str, torch.Tensor] = {"aAcc": _divide(stats.intersect.sum(), stats.label_area.sum())}
    for metric in metrics:
        if metric == "mIoU":
            out["IoU"] = _divide(stats.intersect, stats.union)
            out["Acc"] = _divide(stats.intersect, stats.label_area)
        elif metric == "mDice":
            out["Dice"] = _divide(2 * stats.intersect, stats.pred_area + stats.label_area)
            out["Acc"] = _divide(stats.intersect, stats.label_area)
        elif metric == "mFscore":
            precision = _divide(stats.intersect, stats.pred_area)
            recall = _divide(stats.intersect, stats.label_area)
            b2 = beta**2
            # NaN precision/recall propagate; 0/0 F-score (both zero) is NaN as in MMSeg's f_score.
            out["Fscore"] = (1 + b2) * precision * recall / (b2 * precision + recall)
            out["Precision"] = precision
            out["Recall"] = recall
    if nan_to_num is not None:
        out = {k: torch.nan_to_num(v, nan=nan_to_num) for k, v in out.items()}
    return out


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


@EVALUATORS.register()
class IoUMetric:
    """mIoU / mDice / mFscore over a dataset, comparable with MMSeg's ``IoUMetric``.

    Ground truth per image comes from ``meta.extra["seg_map_path"]`` (read with
    :func:`masklab.data.io.read_label`, with ``meta.extra["reduce_zero_label"]`` applied), else from
    ``meta.extra["gt_semantic"]`` (an (H, W) tensor already in training label space), else from the
    batch's semantic map when the image was not resized (``img_shape == ori_shape``).

    Args:
        num_classes: number of classes.
        ignore_index: ground-truth label excluded everywhere.
        metrics: any of "mIoU", "mDice", "mFscore".
        class_names: names for the report (default: "0", "1", ...).
        nan_to_num: replace NaN per-class values before averaging (MMSeg semantics); None keeps NaN.
        beta: the F-score's beta.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        metrics: Sequence[str] = ("mIoU",),
        class_names: Sequence[str] | None = None,
        nan_to_num: float | None = None,
        beta: float = 1.0,
    ) -> None:
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        for m in metrics:
            if m not in _METRICS:
                raise ConfigError(
                    f"evaluate.metrics: unknown metric {m!r}; expected some of {', '.join(_METRICS)}"
                )
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"evaluate.class_names: {len(class_names)} names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.metrics = metrics
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
        )
        self.nan_to_num = nan_to_num
        self.beta = beta
        self.test_description = "whole image"
        self.reset()

    @property
    def metric_description(self) -> str:
        """How the numbers were computed."""
        return (
            f"{'/'.join(self.metrics)} as fractions (0..1), dataset-level sums of per-class pixel counts, "
            f"NaN-mean over classes, original resolution, ignore_index {self.ignore_index}, {self.test_description}"
        )

    def reset(self) -> None:
        """Forget every processed image."""
        self.stats = AreaStats.zeros(self.num_classes)
        self.num_images = 0
        self._results: dict[str, torch.Tensor] | None = None

    def process(self, batch: Batch | None, predictions: list[SemanticPrediction]) -> None:
        """Accumulate the counts of each prediction against its ground truth."""
        for i, pred in enumerate(predictions):
            label = self._ground_truth(pred.meta, batch, i)
            self.stats += intersect_and_union(pred.label_map, label, self.num_classes, self.ignore_index)
            self.num_images += 1

    def _ground_truth(self, meta: SampleMeta, batch: Batch | None, index: int) -> torch.Tensor:
        return semantic_ground_truth(meta, batch, index, "IoUMetric")

    def compute(self) -> dict[str, float]:
        """Summary metrics (``aAcc``, ``mIoU``, ``mAcc``, ...) as fractions; reduces across ranks first."""
        stats = AreaStats(
            *(
                t.clone()
                for t in (self.stats.intersect, self.stats.union, self.stats.pred_area, self.stats.label_area)
            )
        )
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (stats.intersect, stats.union, stats.pred_area, stats.label_area):
                dist.all_reduce(t)
        self._results = area_to_metrics(stats, self.metrics, self.beta, self.nan_to_num)
        return self._summary()

    def _summary(self) -> dict[str, float]:
        assert self._results is not None
        summary = {"aAcc": float(self._results["aAcc"])}
        for key, values in self._results.items():
            if key != "aAcc":
                summary[f"m{key}"] = _nanmean(values)
        return summary

    def per_class(self) -> dict[str, dict[str, float]]:
        """Class name -> {metric: value} from the last :meth:`compute`."""
        if self._results is None:
            self.compute()
        assert self._results is not None
        keys = [k for k in self._results if k != "aAcc"]
        return {
            name: {k: float(self._results[k][c]) for k in keys} for c, name in enumerate(self.class_names)
        }

    def format_report(self) -> str:
        """A per-class table in percent (values x100, as MMSeg prints them, and labelled so;
        NaN shown as 'nan') followed by the summary line.

        Uses the last :meth:`compute` when there is one: computing again would all-reduce again,
        which under torchrun only rank 0 (the one printing) would enter.
        """
        summary = self._summary() if self._results is not None else self.compute()
        rows = self.per_class()
        keys = [k for k in self._results or {} if k != "aAcc"]
        width = max([5, *(len(n) for n in self.class_names)])
        lines = [f"{'Class':<{width}} | " + " | ".join(f"{k + ' (%)':>9}" for k in keys)]
        lines.append("-" * len(lines[0]))
        for name, values in rows.items():
            lines.append(f"{name:<{width}} | " + " | ".join(f"{values[k] * 100:>9.2f}" for k in keys))
        lines.append("summary (%): " + ", ".join(f"{k} {v * 100:.2f}" for k, v in summary.items()))
        lines.append(
            f"{self.metric_description} (the table above x100; logs and metrics.json hold fractions)"
        )
        return "\n".join(lines)
