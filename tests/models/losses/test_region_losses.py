"""Dice, Focal and Lovász losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.losses import DiceLoss, FocalLoss, LovaszLoss

# One image, two pixels, two classes, equal logits: every probability is 0.5.
EVEN = torch.zeros(1, 2, 1, 2)
LABEL = torch.tensor([[[0, 1]]])


def _logits_for(probs0: list[float]) -> torch.Tensor:
    """(1, 2, 1, P) logits whose softmax gives class-0 probabilities ``probs0``."""
    p = torch.tensor(probs0, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)]).view(1, 2, 1, -1)


def test_dice_hand_value() -> None:
    # per class: inter 0.5, denominator 0.25 + 0.25 + 1 -> 1 - (2 * 0.5 + 1) / (1.5 + 1) = 0.2
    assert float(DiceLoss()(EVEN, LABEL)) == pytest.approx(0.2)


def test_dice_leaves_ignored_pixels_out_and_weights_classes() -> None:
    label = torch.tensor([[[0, 255]]])
    # class 0: 1 - 2 / 2.25; class 1: 1 - 1 / 1.25
    expected = ((1 - 2 / 2.25) + (1 - 1 / 1.25)) / 2
    assert float(DiceLoss()(EVEN, label)) == pytest.approx(expected)
    weighted = DiceLoss(class_weight=[2.0, 0.0], loss_weight=3.0)(EVEN, label)
    assert float(weighted) == pytest.approx(3.0 * (2 * (1 - 2 / 2.25)) / 2)


def test_dice_binary_mode_uses_sigmoid() -> None:
    logits = torch.zeros(1, 1, 1, 2)  # sigmoid 0.5
    # foreground channel only: inter 0.5, denominator 0.5 + 1 -> 1 - 2 / 2.5
    assert float(DiceLoss()(logits, LABEL)) == pytest.approx(0.2)


def test_focal_hand_value() -> None:
    # p = 0.5 everywhere: per channel alpha_t (0.5) * (1 - 0.5)^2 * ln 2, summed over 2 channels
    assert float(FocalLoss()(EVEN, LABEL)) == pytest.approx(0.25 * math.log(2))
    assert float(FocalLoss(gamma=0.0, alpha=0.5)(EVEN, LABEL)) == pytest.approx(math.log(2))


def test_focal_averages_over_valid_pixels_only() -> None:
    label = torch.tensor([[[0, 255]]])
    assert float(FocalLoss()(EVEN, label)) == pytest.approx(0.25 * math.log(2))


def test_focal_down_weights_easy_pixels() -> None:
    easy = torch.tensor([[[[4.0]], [[-4.0]]]])
    hard = torch.tensor([[[[0.5]], [[-0.5]]]])
    label = torch.zeros(1, 1, 1, dtype=torch.long)
    ratio_focal = float(FocalLoss()(easy, label) / FocalLoss()(hard, label))
    ratio_bce = float(FocalLoss(gamma=0.0)(easy, label) / FocalLoss(gamma=0.0)(hard, label))
    assert ratio_focal < ratio_bce / 10


def test_lovasz_hand_value() -> None:
    # one present class, class-0 probabilities 0.8 and 0.6: errors sorted [0.4, 0.2], gradient [0.5, 0.5]
    logits = _logits_for([0.8, 0.6])
    label = torch.zeros(1, 1, 2, dtype=torch.long)
    assert float(LovaszLoss()(logits, label)) == pytest.approx(0.3)


def test_lovasz_on_hard_predictions_is_one_minus_iou() -> None:
    label = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([0, 1, 1, 1])
    logits = torch.nn.functional.one_hot(pred, 2).T.reshape(1, 2, 1, 4).double() * 40.0
    # class 0 IoU 1/2, class 1 IoU 2/3
    assert float(LovaszLoss()(logits, label)) == pytest.approx(((1 - 1 / 2) + (1 - 2 / 3)) / 2)
    assert float(LovaszLoss()(logits, torch.tensor([[[0, 0, 255, 255]]]))) == pytest.approx(0.5)


def test_lovasz_all_classes_counts_absent_ones_and_per_image_averages() -> None:
    logits = _logits_for([0.8, 0.6])
    label = torch.zeros(1, 1, 2, dtype=torch.long)
    # class 1 absent: its errors are 0.2 and 0.4 with no foreground, gradient [1, 0] -> 0.4
    assert float(LovaszLoss(classes="all")(logits, label)) == pytest.approx((0.3 + 0.4) / 2)
    two = torch.cat([logits, _logits_for([0.8, 0.8])])
    labels = torch.zeros(2, 1, 2, dtype=torch.long)
    assert float(LovaszLoss(per_image=True)(two, labels)) == pytest.approx((0.3 + 0.2) / 2)


@pytest.mark.parametrize("loss", [DiceLoss(), FocalLoss(), LovaszLoss()], ids=["dice", "focal", "lovasz"])
def test_losses_backprop_and_handle_all_ignored_batches(loss: torch.nn.Module) -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    label = torch.randint(0, 3, (2, 4, 4))
    loss(logits, label).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    empty = loss(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255))
    assert torch.isfinite(empty)


def test_class_weight_of_the_wrong_length_is_an_error() -> None:
    with pytest.raises(ModelError, match="2 entries but the head predicts 3"):
        DiceLoss(class_weight=[1.0, 2.0]).check_num_classes(3, "decode_head.loss_decode[1]")
    with pytest.raises(ModelError, match="class_weight"):
        FocalLoss(class_weight=[1.0]).check_num_classes(3)
