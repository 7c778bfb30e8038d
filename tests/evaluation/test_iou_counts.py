"""The one-histogram pixel counts against a straightforward per-class loop (MMSeg's rules)."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import DataError
from masklab.evaluation.confusion import confusion_counts
from masklab.evaluation.semantic import intersect_and_union


def _loop_areas(pred: torch.Tensor, label: torch.Tensor, n: int, ignore: int) -> list[list[int]]:
    """MMSeg's IoUMetric spelled out: mask only ``ignore``, then count each class separately."""
    keep = label != ignore
    p, g = pred[keep], label[keep]
    inter = [int(((p == c) & (g == c)).sum()) for c in range(n)]
    area_p = [int((p == c).sum()) for c in range(n)]
    area_g = [int((g == c).sum()) for c in range(n)]
    union = [a + b - i for a, b, i in zip(area_p, area_g, inter, strict=True)]
    return [inter, union, area_p, area_g]


def _loop_confusion(pred: torch.Tensor, label: torch.Tensor, n: int, ignore: int) -> list[list[int]]:
    keep = label != ignore
    p, g = pred[keep], label[keep]
    return [[int(((g == r) & (p == c)).sum()) for c in range(n)] for r in range(n)]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("ignore", [255, 0])
def test_counts_match_a_per_class_loop_on_random_maps(dtype: torch.dtype, ignore: int) -> None:
    gen = torch.Generator().manual_seed(ignore + dtype.itemsize)
    n = 7
    pred = torch.randint(0, n, (37, 53), generator=gen)
    label = torch.randint(0, n, (37, 53), generator=gen)
    label[torch.rand(37, 53, generator=gen) < 0.1] = ignore
    pred, label = pred.to(dtype), label.to(dtype)
    stats = intersect_and_union(pred, label, n, ignore)
    got = [t.tolist() for t in (stats.intersect, stats.union, stats.pred_area, stats.label_area)]
    assert got == _loop_areas(pred, label, n, ignore)
    assert all(t.dtype == torch.int64 for t in (stats.intersect, stats.union))
    assert confusion_counts(pred, label, n, ignore).tolist() == _loop_confusion(pred, label, n, ignore)


@pytest.mark.parametrize("ignore", [255, -1])
def test_out_of_range_values_follow_mmseg_and_never_alias(ignore: int) -> None:
    gen = torch.Generator().manual_seed(1)
    n = 5
    # Out-of-range on both sides: negative, just above C, huge (would alias or blow up a naive bincount).
    pool = torch.tensor([0, 1, 2, 3, 4, 5, 9, -3, 1 << 40, ignore])
    pred = pool[torch.randint(0, len(pool), (400,), generator=gen)]
    label = pool[torch.randint(0, len(pool), (400,), generator=gen)]
    stats = intersect_and_union(pred, label, n, ignore)
    got = [t.tolist() for t in (stats.intersect, stats.union, stats.pred_area, stats.label_area)]
    assert got == _loop_areas(pred, label, n, ignore)
    assert confusion_counts(pred, label, n, ignore).tolist() == _loop_confusion(pred, label, n, ignore)


def test_empty_maps_and_shape_mismatch() -> None:
    empty = torch.zeros(0, 4, dtype=torch.int64)
    assert intersect_and_union(empty, empty, 3, 255).union.tolist() == [0, 0, 0]
    with pytest.raises(DataError, match="differ in size"):
        intersect_and_union(torch.zeros(2, 2), torch.zeros(2, 3), 3, 255)
