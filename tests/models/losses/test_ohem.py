"""OHEM pixel sampler: threshold and top-k modes against hand-picked pixels; wiring into a head."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.losses import CrossEntropyLoss, DiceLoss, OHEMPixelSampler
from masklab.models.semantic import FCNHead

# True-class probabilities 0.9, 0.5, 0.3, 0.95 and one ignored pixel (class 0 is the truth).
PROBS = torch.tensor([0.9, 0.5, 0.3, 0.95, 0.5], dtype=torch.float64)
LOGITS = torch.stack([torch.log(PROBS / (1 - PROBS)), torch.zeros_like(PROBS)]).view(1, 2, 1, 5)
LABEL = torch.tensor([[[0, 0, 0, 0, 255]]])


def test_threshold_mode_keeps_pixels_below_thresh() -> None:
    weight = OHEMPixelSampler(thresh=0.7, min_kept=1)(LOGITS, LABEL)
    assert weight.tolist() == [[[0.0, 1.0, 1.0, 0.0, 0.0]]]


def test_threshold_rises_to_keep_min_kept_pixels() -> None:
    # the 4th smallest probability (index min_kept=3) is 0.95, so everything below it trains
    weight = OHEMPixelSampler(thresh=0.7, min_kept=3)(LOGITS, LABEL)
    assert weight.tolist() == [[[1.0, 1.0, 1.0, 0.0, 0.0]]]


def test_topk_mode_keeps_the_highest_losses() -> None:
    weight = OHEMPixelSampler(min_kept=2)(LOGITS, LABEL)
    assert weight.tolist() == [[[0.0, 1.0, 1.0, 0.0, 0.0]]]


def test_all_ignored_gives_zero_weights() -> None:
    weight = OHEMPixelSampler(thresh=0.7, min_kept=2)(LOGITS, torch.full((1, 1, 5), 255))
    assert weight.sum() == 0


def test_bad_settings_are_errors() -> None:
    with pytest.raises(ModelError, match="thresh"):
        OHEMPixelSampler(thresh=1.5)
    with pytest.raises(ModelError, match="min_kept"):
        OHEMPixelSampler(min_kept=0)


def test_head_logs_every_loss_and_ohem_weights_the_ce() -> None:
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 8, 8)]
    label = torch.randint(0, 3, (2, 8, 8))
    kw = dict(in_channels=[4], channels=4, num_classes=3, in_index=0, dropout_ratio=0.0)
    head = FCNHead(
        **kw,
        loss_decode=[CrossEntropyLoss(loss_weight=1.0), DiceLoss(loss_weight=0.5)],
        sampler=OHEMPixelSampler(min_kept=10),
    ).eval()
    logits = head(feats)
    losses = head.loss(logits, label)
    assert set(losses) == {"loss_ce", "loss_dice", "acc_seg"}
    weight = OHEMPixelSampler(min_kept=10)(logits, label)
    assert int(weight.sum()) == 20
    ce = torch.nn.functional.cross_entropy(logits, label, reduction="none")
    torch.testing.assert_close(losses["loss_ce"], (ce * weight).mean())
    torch.testing.assert_close(losses["loss_dice"], 0.5 * DiceLoss()(logits, label, weight=weight))


def test_head_refuses_a_class_weight_of_the_wrong_length() -> None:
    with pytest.raises(ModelError, match=r"loss_decode\[1\].class_weight has 2 entries"):
        FCNHead(
            in_channels=[4],
            channels=4,
            num_classes=3,
            in_index=0,
            loss_decode=[CrossEntropyLoss(), DiceLoss(class_weight=[1.0, 1.0])],
        )
