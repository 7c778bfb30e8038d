"""Confusion matrix accumulation: hand counts, ignore, label maps from the dataset, CSV/PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from masklab.evaluation.confusion import ConfusionMatrix, WithConfusion, confusion_counts
from masklab.evaluation.semantic import IoUMetric
from masklab.structures import SampleMeta
from masklab.structures.predictions import SemanticPrediction


def _pred(values: list[list[int]], **extra: object) -> SemanticPrediction:
    t = torch.tensor(values)
    meta = SampleMeta(ori_shape=tuple(t.shape), img_shape=tuple(t.shape), extra=dict(extra))
    return SemanticPrediction(label_map=t, meta=meta)


def test_counts_by_hand_and_ignore() -> None:
    pred = torch.tensor([[0, 1, 1], [2, 2, 7]])
    gt = torch.tensor([[0, 1, 2], [2, 255, 1]])
    m = confusion_counts(pred, gt, 3)
    # (gt 0, pred 0), (1, 1), (2, 1), (2, 2); the ignore pixel and the out-of-range prediction drop out.
    assert m.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_evaluator_applies_dataset_label_maps_and_writes_csv_png(tmp_path: Path) -> None:
    gt_file = tmp_path / "gt.png"
    Image.fromarray(np.array([[0, 1, 2], [3, 255, 3]], np.uint8)).save(gt_file)
    # reduce_zero_label, then the subset map: stored 3 -> 2 -> 0, every other value -> ignore.
    extra = {"seg_map_path": str(gt_file), "reduce_zero_label": True, "label_map": {0: 255, 1: 255, 2: 0}}
    pred = _pred([[0, 0, 1], [0, 1, 1]], **extra)
    cm = ConfusionMatrix(2, ("a", "b"))
    iou = IoUMetric(2, class_names=("a", "b"))
    both = WithConfusion(iou, cm)
    both.reset()
    both.process(None, [pred])
    both.process(None, [_pred([[1, 1]], gt_semantic=torch.tensor([[1, 0]]))])
    assert cm.matrix.tolist() == [[1, 2], [0, 1]]
    assert cm.compute()["aAcc"] == 0.5
    png, csv_path = cm.save(tmp_path / "out")
    rows = list(csv.reader(csv_path.open()))
    assert rows == [["gt\\pred", "a", "b"], ["a", "1", "2"], ["b", "0", "1"]]
    assert png.is_file() and "a -> b: 2 px (66.7 %)" in cm.format_report()
    assert both.metric_description == iou.metric_description  # reports through the wrapped evaluator
