"""DecodeHead/FCNHead: construction checks, input selection, loss keys, binary mode."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.losses import CrossEntropyLoss
from masklab.models.semantic import FCNHead

FEATS = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]


def test_forward_reads_the_selected_level() -> None:
    head = FCNHead(in_channels=[4, 6], channels=8, num_classes=3, in_index=1)
    assert head.in_channels == 6
    assert tuple(head(FEATS).shape) == (2, 3, 4, 4)


def test_resize_concat_sums_channels_and_uses_the_first_resolution() -> None:
    head = FCNHead(
        in_channels=[4, 6], channels=8, num_classes=3, in_index=[0, 1], input_transform="resize_concat"
    )
    assert head.in_channels == 10
    assert tuple(head(FEATS).shape) == (2, 3, 8, 8)


def test_num_convs_zero_without_concat_is_a_classifier_on_the_input() -> None:
    head = FCNHead(in_channels=[4, 6], channels=4, num_classes=3, in_index=0, num_convs=0, concat_input=False)
    head.eval()
    expected = head.conv_seg(FEATS[0])
    torch.testing.assert_close(head(FEATS), expected)


def test_loss_resizes_logits_and_reports_accuracy_fraction() -> None:
    head = FCNHead(in_channels=[4, 6], channels=8, num_classes=3, in_index=0)
    label = torch.randint(0, 3, (2, 16, 16))
    label[:, :2] = 255
    losses = head.loss(head(FEATS), label)
    assert set(losses) == {"loss_ce", "acc_seg"}
    assert 0.0 <= float(losses["acc_seg"]) <= 1.0
    losses["loss_ce"].backward()
    assert head.conv_seg.weight.grad is not None


def test_losses_sharing_a_name_are_summed_and_others_logged_apart() -> None:
    torch.manual_seed(0)
    head = FCNHead(
        in_channels=[4],
        channels=4,
        num_classes=3,
        in_index=0,
        dropout_ratio=0.0,
        loss_decode=[
            CrossEntropyLoss(),
            CrossEntropyLoss(loss_weight=2.0),
            CrossEntropyLoss(loss_name="loss_x"),
        ],
    ).eval()
    label = torch.randint(0, 3, (2, 8, 8))
    losses = head.loss(head(FEATS[:1]), label)
    torch.testing.assert_close(losses["loss_ce"], 3 * losses["loss_x"])


def test_one_class_softmax_is_refused_with_the_fix() -> None:
    with pytest.raises(ModelError, match="binary: true"):
        FCNHead(in_channels=[4], channels=4, num_classes=1, in_index=0)


def test_binary_mode_one_channel_sigmoid_threshold() -> None:
    head = FCNHead(in_channels=[4], channels=4, num_classes=2, in_index=0, binary=True, threshold=0.7)
    assert head.out_channels == 1 and head.loss_decode[0].use_sigmoid
    logits = torch.logit(torch.tensor([0.6, 0.8])).view(1, 1, 1, 2)
    assert head.predict_labels(logits).tolist() == [[[0, 1]]]
    losses = head.loss(head(FEATS[:1]), torch.randint(0, 2, (2, 8, 8)))
    assert torch.isfinite(losses["loss_ce"])


def test_binary_with_softmax_loss_is_refused() -> None:
    with pytest.raises(ModelError, match="use_sigmoid"):
        FCNHead(
            in_channels=[4],
            channels=4,
            num_classes=2,
            in_index=0,
            binary=True,
            loss_decode=CrossEntropyLoss(),
        )


def test_in_index_out_of_range_names_the_key() -> None:
    with pytest.raises(ModelError, match="in_index"):
        FCNHead(in_channels=[4, 6], channels=4, num_classes=3, in_index=5)
