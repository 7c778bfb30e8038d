"""EncoderDecoder: derived channels, loss keys, backward, predict geometry, slide and TTA."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.lazy import Lazy
from masklab.errors import ConfigError
from masklab.models.backbones import FeatureInfo
from masklab.models.semantic import EncoderDecoder, FCNHead, TTASettings
from masklab.structures import Batch, SampleMeta


class TinyBackbone(nn.Module):
    """Two strided convs (strides 2 and 4): fast, and its output depends on the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.feature_info = FeatureInfo(channels=[4, 6], strides=[2, 4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.a(x)
        return [a, self.b(a)]


def _model(**kwargs) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(
        TinyBackbone(),
        functools.partial(FCNHead, channels=8, in_index=1, dropout_ratio=0.0),
        num_classes=3,
        data_preprocessor=nn.Identity(),
        **kwargs,
    )


def _batch(metas: list[SampleMeta], size: int = 16) -> Batch:
    torch.manual_seed(1)
    return Batch(
        images=torch.randn(len(metas), 3, size, size),
        metas=metas,
        semantic=torch.randint(0, 3, (len(metas), size, size)),
    )


def test_loss_has_decode_and_aux_keys_and_backpropagates() -> None:
    aux = functools.partial(FCNHead, channels=4, in_index=0, num_convs=1, concat_input=False)
    model = _model(auxiliary_head=aux).train()
    assert model.decode_head.in_channels == 6 and model.auxiliary_heads[0].in_channels == 4
    losses = model(_batch([SampleMeta(), SampleMeta()]), mode="loss")
    assert set(losses) == {"loss_ce", "acc_seg", "loss_aux_ce", "aux_acc_seg"}
    # The trainer's rule (contracts): keys starting with "loss" are optimised, aux included.
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert model.backbone.a.weight.grad is not None and model.backbone.a.weight.grad.abs().sum() > 0
    assert model.auxiliary_heads[0].conv_seg.weight.grad is not None


def test_several_aux_heads_get_numbered_keys() -> None:
    aux = functools.partial(FCNHead, channels=4, in_index=0, num_convs=1, concat_input=False)
    losses = _model(auxiliary_head=[aux, aux])(_batch([SampleMeta()]), mode="loss")
    assert {"loss_aux0_ce", "loss_aux1_ce", "aux0_acc_seg", "aux1_acc_seg"} <= set(losses)


def test_predict_crops_padding_and_resizes_to_original_shape() -> None:
    model = _model().eval()
    metas = [
        SampleMeta(ori_shape=(20, 30), img_shape=(12, 14)),
        SampleMeta(ori_shape=(16, 16), img_shape=(16, 16)),
    ]
    batch = _batch(metas)
    preds = model(batch, mode="predict")
    assert tuple(preds[0].label_map.shape) == (20, 30) and tuple(preds[0].logits.shape) == (3, 20, 30)
    assert tuple(preds[1].label_map.shape) == (16, 16)
    with torch.no_grad():
        full = model.encode_decode(batch.images)
    expected = F.interpolate(full[:1, :, :12, :14], size=(20, 30), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(preds[0].logits, expected)
    assert torch.equal(preds[0].label_map, expected.argmax(0))


def test_slide_equals_whole_when_one_crop_covers_the_image() -> None:
    model = _model().eval()
    batch = _batch([SampleMeta(ori_shape=(16, 16), img_shape=(16, 16))])
    whole = model(batch, mode="predict")[0].logits
    model.set_test_mode("slide", crop_size=(32, 32), stride=(16, 16))
    slide = model(batch, mode="predict")[0].logits
    torch.testing.assert_close(slide, whole)


def test_slide_needs_crop_and_stride() -> None:
    with pytest.raises(ConfigError, match="crop_size"):
        _model(test_mode="slide")


def test_binary_predict_thresholds_the_sigmoid() -> None:
    torch.manual_seed(0)
    model = EncoderDecoder(
        TinyBackbone(),
        functools.partial(FCNHead, channels=8, in_index=1, binary=True, threshold=0.5),
        num_classes=2,
        data_preprocessor=nn.Identity(),
    ).eval()
    pred = model(_batch([SampleMeta(ori_shape=(16, 16), img_shape=(16, 16))]), mode="predict")[0]
    assert pred.logits.shape[0] == 1
    assert torch.equal(pred.label_map, (pred.logits[0].sigmoid() > 0.5).long())


def test_tta_identity_settings_match_plain_prediction() -> None:
    model = _model().eval()
    batch = _batch([SampleMeta(ori_shape=(16, 16), img_shape=(16, 16))])
    plain = model(batch, mode="predict")[0]
    model.set_test_mode("whole", tta=TTASettings(scales=(1.0,), flip=False))
    tta = model(batch, mode="predict")[0]
    assert torch.equal(tta.label_map, plain.label_map)
    # TTA logits are log-probabilities: their softmax is the plain softmax.
    torch.testing.assert_close(tta.logits.softmax(0), plain.logits.softmax(0), atol=1e-5, rtol=1e-4)


def test_lazy_head_restating_num_classes_differently_is_refused() -> None:
    head = Lazy(FCNHead, {"channels": 8, "num_classes": 5}, path="model.decode_head", source="m.yaml")
    with pytest.raises(
        ConfigError,
        match=r"^m\.yaml: model\.decode_head\.num_classes: config says 5 but the model derives 3 ",
    ):
        EncoderDecoder(TinyBackbone(), head, num_classes=3, data_preprocessor=nn.Identity())


class ShapeRecordingBackbone(TinyBackbone):
    """TinyBackbone that remembers the size of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        return super().forward(x)


def test_tta_views_are_padded_to_the_size_divisor_like_the_plain_path() -> None:
    """A TTA view is cut out of the padded batch; it is padded again before the forward, so a 20 px
    image meets the network at 32 px in TTA as without it (at 20 px a stride-32 network failed)."""
    from masklab.data.preprocessor import DataPreprocessor

    torch.manual_seed(0)
    backbone = ShapeRecordingBackbone()
    model = EncoderDecoder(
        backbone,
        functools.partial(FCNHead, channels=8, in_index=1, dropout_ratio=0.0),
        num_classes=3,
        data_preprocessor=DataPreprocessor(size_divisor=32),
    ).eval()
    raw = Batch(
        images=torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8),
        metas=[SampleMeta(ori_shape=(20, 20), img_shape=(20, 20))],
    )
    batch = model.data_preprocessor(raw)
    plain = model(batch, mode="predict")[0]
    model.set_test_mode("whole", tta=TTASettings(scales=(1.0,), flip=False))
    same = model(batch, mode="predict")[0]
    torch.testing.assert_close(same.logits.softmax(0), plain.logits.softmax(0), atol=1e-5, rtol=1e-4)
    backbone.sizes.clear()
    model.set_test_mode("whole", tta=TTASettings(scales=(0.5, 1.0, 1.7), flip=True))
    pred = model(batch, mode="predict")[0]
    assert pred.label_map.shape == (20, 20)
    assert backbone.sizes == [(32, 32)] * 4 + [(64, 64)] * 2, backbone.sizes
