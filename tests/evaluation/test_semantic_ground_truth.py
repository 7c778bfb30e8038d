"""IoUMetric reads ground truth through the dataset's label mapping (class subsets, reduce_zero_label)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from masklab.evaluation.semantic import IoUMetric
from masklab.structures import SampleMeta, SemanticPrediction


def test_label_map_is_applied_to_ground_truth_files(tmp_path) -> None:
    # Stored ids 5 and 7 are the training classes 0 and 1; anything else is ignored.
    stored = np.array([[5, 5, 7, 7], [5, 5, 7, 9]], dtype=np.uint8)
    path = tmp_path / "gt.png"
    Image.fromarray(stored, mode="L").save(path)
    meta = SampleMeta(
        image_id=0,
        ori_shape=(2, 4),
        img_shape=(2, 4),
        extra={"seg_map_path": str(path), "label_map": {5: 0, 7: 1, 9: 255}},
    )
    label_map = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])  # last pixel is ignore in the GT
    metric = IoUMetric(num_classes=2)
    metric.process(None, [SemanticPrediction(label_map=label_map, meta=meta)])
    out = metric.compute()
    # With the map applied, every non-ignored pixel is right; without it, nothing would match.
    assert out["mIoU"] == 1.0
    assert out["aAcc"] == 1.0


def test_reduce_zero_label_ground_truth_uses_the_dataset_ignore_index(tmp_path) -> None:
    """With reduce_zero_label and ignore_index 254, stored 0 is 254 in training and in evaluation:
    a perfect prediction scores 1.0 (the evaluator's table used 255, counting stored 0 and 255 as
    a wrong class and giving mIoU 0.75)."""
    from masklab.data.datasets.semantic import FolderSegDataset

    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    stored = np.array([[0, 1, 1, 2, 2, 255]] * 4, dtype=np.uint8)
    Image.fromarray(stored, mode="L").save(tmp_path / "ann" / "a.png")
    ds = FolderSegDataset(
        tmp_path / "img",
        tmp_path / "ann",
        img_suffix=".png",
        classes=["b", "c"],
        reduce_zero_label=True,
        ignore_index=254,
    )
    sample = ds[0]
    assert sorted(sample.semantic.unique().tolist()) == [0, 1, 254]
    perfect = torch.where(sample.semantic == 254, 0, sample.semantic)
    metric = IoUMetric(num_classes=2, ignore_index=254)
    metric.process(None, [SemanticPrediction(label_map=perfect, meta=sample.meta)])
    assert metric.compute()["mIoU"] == 1.0
