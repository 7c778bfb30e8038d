"""CrossEntropyLoss against hand computations of MMSeg's averaging rules."""

from __future__ import annotations

import math

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.losses import CrossEntropyLoss
from masklab.models.semantic import FCNHead

# One image, 3 classes, 2x2 pixels; pixel (1, 1) is ignored.
LOGITS = torch.tensor([[[[2.0, 0.0], [1.0, 3.0]], [[0.0, 1.0], [1.0, 0.0]], [[-1.0, 0.5], [2.0, 1.0]]]])
LABEL = torch.tensor([[[0, 2], [1, 255]]])


def _nll(pixel: tuple[int, int], cls: int) -> float:
    scores = [float(LOGITS[0, c, pixel[0], pixel[1]]) for c in range(3)]
    return -(scores[cls] - math.log(sum(math.exp(s) for s in scores)))


VALID = [((0, 0), 0), ((0, 1), 2), ((1, 0), 1)]


def test_default_divides_by_all_pixels_ignored_included() -> None:
    expected = sum(_nll(p, c) for p, c in VALID) / 4
    assert float(CrossEntropyLoss()(LOGITS, LABEL)) == pytest.approx(expected, rel=1e-5)


def test_avg_non_ignore_divides_by_labelled_pixels() -> None:
    expected = sum(_nll(p, c) for p, c in VALID) / 3
    assert float(CrossEntropyLoss(avg_non_ignore=True)(LOGITS, LABEL)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_class_weights_scale_pixels_but_not_the_divisor(avg_non_ignore: bool) -> None:
    w = [0.5, 2.0, 3.0]
    expected = sum(w[c] * _nll(p, c) for p, c in VALID) / (3 if avg_non_ignore else 4)
    loss = CrossEntropyLoss(class_weight=w, avg_non_ignore=avg_non_ignore, loss_weight=2.0)(LOGITS, LABEL)
    assert float(loss) == pytest.approx(2.0 * expected, rel=1e-5)


def test_sigmoid_binary_masks_ignored_pixels() -> None:
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    label = torch.tensor([[[1, 0], [255, 1]]])

    def bce(x: float, y: int) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    total = bce(0.5, 1) + bce(-1.0, 0) + bce(0.0, 1)
    assert float(CrossEntropyLoss(use_sigmoid=True)(logits, label)) == pytest.approx(total / 4, rel=1e-5)
    loss = CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(logits, label)
    assert float(loss) == pytest.approx(total / 3, rel=1e-5)


def test_all_ignored_gives_zero_not_nan() -> None:
    label = torch.full((1, 2, 2), 255)
    assert float(CrossEntropyLoss(avg_non_ignore=True)(LOGITS, label)) == 0.0


def test_class_weight_length_is_checked_when_the_head_is_built() -> None:
    with pytest.raises(ModelError, match="class_weight has 2 entries .* 3 channels"):
        FCNHead(
            in_channels=[4], channels=4, num_classes=3, loss_decode=CrossEntropyLoss(class_weight=[1.0, 2.0])
        )
