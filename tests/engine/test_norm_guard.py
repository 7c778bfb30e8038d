"""Norm layers' single-value errors become one-line ConfigErrors; other ValueErrors pass through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masklab.engine.norm_guard import single_value_norm_guard
from masklab.errors import ConfigError


@pytest.mark.parametrize(
    ("layer", "training"),
    [(nn.BatchNorm2d(8), True), (nn.GroupNorm(8, 8), False)],  # GroupNorm refuses in eval mode too
    ids=["batchnorm_train", "groupnorm_eval"],
)
def test_single_value_per_channel_names_batch_and_size(layer: nn.Module, training: bool) -> None:
    images = torch.zeros(1, 3, 24, 40)
    layer.train(training)
    with pytest.raises(ConfigError, match=r"^evaluation: .*single value per channel .*1 image\(s\) of 24x40"):
        with single_value_norm_guard(images, "evaluation"):
            layer(torch.zeros(1, 8, 1, 1))


def test_other_value_errors_are_not_rewritten() -> None:
    with pytest.raises(ValueError, match="something else"):
        with single_value_norm_guard(torch.zeros(2, 3, 8, 8), "train"):
            raise ValueError("something else")
