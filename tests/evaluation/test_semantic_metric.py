"""IoUMetric on hand-made cases: MMSeg's dataset-level sums, NaN rules, ignore pixels."""

from __future__ import annotations

import math

import pytest
import torch

from masklab.data.io import write_png_atomic
from masklab.errors import DataError
from masklab.evaluation.semantic import IoUMetric
from masklab.structures import SampleMeta, SemanticPrediction


def _pred(pred: list[list[int]], gt: list[list[int]], **extra: object) -> SemanticPrediction:
    g = torch.tensor(gt)
    meta = SampleMeta(ori_shape=tuple(g.shape), img_shape=tuple(g.shape), extra={"gt_semantic": g, **extra})
    return SemanticPrediction(label_map=torch.tensor(pred), meta=meta)


def _run(metric: IoUMetric, *preds: SemanticPrediction) -> dict[str, float]:
    metric.process(None, list(preds))
    return metric.compute()


def test_perfect_prediction() -> None:
    res = _run(IoUMetric(3, metrics=("mIoU", "mDice", "mFscore")), _pred([[0, 1], [2, 2]], [[0, 1], [2, 2]]))
    for key in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall"):
        assert res[key] == pytest.approx(1.0), key


def test_disjoint_and_absent_class_is_nan_and_excluded() -> None:
    metric = IoUMetric(3)
    # Class 2 appears in neither prediction nor ground truth.
    res = _run(metric, _pred([[0, 0], [0, 0]], [[1, 1], [1, 1]]))
    per_class = metric.per_class()
    assert per_class["0"]["IoU"] == 0.0 and per_class["1"]["IoU"] == 0.0
    assert math.isnan(per_class["2"]["IoU"]) and math.isnan(per_class["0"]["Acc"])  # class 0 absent from GT
    assert res["mIoU"] == 0.0 and res["aAcc"] == 0.0
    assert res["mAcc"] == 0.0  # only class 1 has a defined accuracy


def test_ignore_pixels_do_not_count() -> None:
    res = _run(IoUMetric(2), _pred([[0, 1], [1, 1]], [[0, 255], [1, 255]]))
    assert res["mIoU"] == 1.0 and res["aAcc"] == 1.0


def test_images_are_summed_at_dataset_level_not_averaged() -> None:
    metric = IoUMetric(2)
    # Image 1: class 0 I=1, U=2. Image 2: class 0 I=3, U=3 (and class 1 I=1, U=2).
    a = _pred([[0, 1]], [[0, 0]])
    b = _pred([[0, 0, 0, 1]], [[0, 0, 0, 0]])
    res = _run(metric, a, b)
    iou0 = (1 + 3) / (2 + 4)  # per-image mean would be (0.5 + 0.75) / 2
    assert metric.per_class()["0"]["IoU"] == pytest.approx(iou0)
    assert metric.per_class()["1"]["IoU"] == 0.0  # predicted, never in GT
    assert math.isnan(metric.per_class()["1"]["Acc"])
    assert res["mIoU"] == pytest.approx(iou0 / 2)
    assert res["aAcc"] == pytest.approx(4 / 6)


def test_dice_and_fscore_formulas() -> None:
    metric = IoUMetric(2, metrics=("mDice", "mFscore"), beta=2.0)
    _run(metric, _pred([[0, 0, 0, 1]], [[0, 0, 1, 1]]))
    c0 = metric.per_class()["0"]
    # class 0: I=2, P=3, G=2
    assert c0["Dice"] == pytest.approx(2 * 2 / (3 + 2))
    p, r = 2 / 3, 1.0
    assert c0["Fscore"] == pytest.approx(5 * p * r / (4 * p + r))


def test_nan_to_num_replaces_before_the_mean() -> None:
    res = _run(IoUMetric(3, nan_to_num=0.0), _pred([[0, 1]], [[0, 1]]))
    assert res["mIoU"] == pytest.approx(2 / 3)


def test_ground_truth_file_with_reduce_zero_label(tmp_path) -> None:
    path = tmp_path / "gt.png"
    write_png_atomic(path, torch.tensor([[0, 1, 2, 255]], dtype=torch.uint8))
    meta = SampleMeta(
        ori_shape=(1, 4), img_shape=(1, 4), extra={"seg_map_path": str(path), "reduce_zero_label": True}
    )
    metric = IoUMetric(2)
    # File ids 1, 2 become 0, 1; 0 and 255 are ignored, so the wrong predictions there do not count.
    metric.process(None, [SemanticPrediction(label_map=torch.tensor([[1, 0, 1, 0]]), meta=meta)])
    assert metric.compute()["mIoU"] == 1.0


def test_missing_ground_truth_is_a_data_error() -> None:
    meta = SampleMeta(file_name="a.jpg", ori_shape=(2, 2), img_shape=(1, 1))
    with pytest.raises(DataError, match="a.jpg"):
        IoUMetric(2).process(
            None, [SemanticPrediction(label_map=torch.zeros(2, 2, dtype=torch.long), meta=meta)]
        )


def test_report_lists_every_class_and_says_how() -> None:
    metric = IoUMetric(2, class_names=("road", "sky"))
    _run(metric, _pred([[0, 1]], [[0, 1]]))
    report = metric.format_report()
    assert "road" in report and "sky" in report and "fractions" in metric.metric_description
    # the printed table is in percent and says so (the metrics themselves stay fractions)
    assert "IoU (%)" in report and "summary (%): aAcc 100.00" in report


def test_compute_reduces_across_ranks_when_a_group_exists(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        res = _run(IoUMetric(2), _pred([[0, 1]], [[0, 0]]))
    finally:
        dist.destroy_process_group()
    assert res["aAcc"] == pytest.approx(0.5)
