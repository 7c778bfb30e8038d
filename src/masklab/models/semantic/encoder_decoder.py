"""Backbone (+ neck) + decode head (+ auxiliary heads): the classic semantic segmentor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.lazy import Lazy
from masklab.config.registries import MODELS
from masklab.errors import ConfigError, ModelError
from masklab.inference.sliding_window import slide_inference, tta_inference
from masklab.models.layers.resize import resize_bilinear
from masklab.models.semantic.decode_head import DecodeHead
from masklab.structures.batch import Batch
from masklab.structures.predictions import SemanticPrediction

TestMode = Literal["whole", "slide"]


@dataclass(frozen=True)
class TTASettings:
    """Multi-scale / flip test-time augmentation.

    Attributes:
        scales: resize ratios of the input (1.0 = as given).
        flip: also predict horizontally flipped views.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False


class _IdentityPreprocessor(nn.Module):
    """Stand-in when ``masklab.data`` cannot provide a ``DataPreprocessor``: returns the batch as is."""

    def forward(self, batch: Batch, training: bool = False) -> Batch:
        return batch


def _default_preprocessor() -> nn.Module:
    try:
        from masklab.data.loader import DataPreprocessor
    except ImportError:  # the data package is optional for model-only use
        return _IdentityPreprocessor()
    return DataPreprocessor()


_DERIVED_FROM = {
    "num_classes": "model.num_classes, the dataset metadata's class count unless the config sets it",
    "in_channels": "the output channels of the module before it",
}


def _build_child(factory: Callable[..., Any], where: str, **derived: Any) -> Any:
    """Complete a ``Lazy`` (or any callable) with derived kwargs, refusing a config that restates them."""
    if isinstance(factory, Lazy):
        for key, value in derived.items():
            if key in factory.kwargs and factory.kwargs[key] != value:
                path = f"{factory.path or where}.{key}"
                file = factory.origin(path) if factory.origin is not None else factory.source
                raise ConfigError(
                    f"{file + ': ' if file else ''}{path}: config says {factory.kwargs[key]!r} but the model "
                    f"derives {value!r} ({_DERIVED_FROM.get(key, 'from the parts it builds')}); remove the key, "
                    "the model fills it in"
                )
    try:
        return factory(**derived)
    except ModelError as exc:
        # Heads name their own keys as ``decode_head.<key>``; put them under the config key of the
        # head that raised (``model.decode_head``, ``model.auxiliary_head[i]``), as doctor spells them.
        text = str(exc)
        if text.startswith("decode_head"):
            raise ModelError(where + text[len("decode_head") :]) from None
        raise


@MODELS.register()
class EncoderDecoder(nn.Module):
    """MMSeg-style semantic segmentor.

    Args:
        backbone: a built backbone exposing ``feature_info``.
        decode_head: the main head, completed here with ``in_channels`` and ``num_classes``.
        num_classes: number of classes (taken from the dataset when the config omits it).
        neck: optional neck, completed with ``in_channels``; must expose ``out_channels`` (a list).
        auxiliary_head: optional training-only head(s) on other levels, logged as ``loss_aux_ce`` /
            ``aux_acc_seg`` (one) or ``loss_aux<i>_ce`` / ``aux<i>_acc_seg`` (several).
        data_preprocessor: normalisation / padding module; default ``masklab.data`` 's ``DataPreprocessor()``.
        test_mode: "whole" image or "slide" window inference.
        crop_size: (h, w) sliding window, required for "slide".
        stride: (h, w) sliding step, required for "slide".
        align_corners: of the resizes back to the input and original sizes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: Lazy[DecodeHead],
        num_classes: int,
        neck: Lazy[nn.Module] | None = None,
        auxiliary_head: Lazy[DecodeHead] | list[Lazy[DecodeHead]] | None = None,
        data_preprocessor: nn.Module | None = None,
        test_mode: TestMode = "whole",
        crop_size: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        info = getattr(backbone, "feature_info", None)
        if info is None:
            raise ModelError(f"model.backbone: {type(backbone).__name__} has no feature_info")
        channels = list(info.channels)
        self.neck: nn.Module | None = None
        if neck is not None:
            self.neck = _build_child(neck, "model.neck", in_channels=channels)
            channels = list(getattr(self.neck, "out_channels", []))
            if not channels:
                raise ModelError(f"model.neck: {type(self.neck).__name__} must expose out_channels (a list)")
        self.num_classes = num_classes
        self.decode_head: DecodeHead = _build_child(
            decode_head, "model.decode_head", in_channels=channels, num_classes=num_classes
        )
        aux = (
            []
            if auxiliary_head is None
            else auxiliary_head
            if isinstance(auxiliary_head, list)
            else [auxiliary_head]
        )
        self.auxiliary_heads = nn.ModuleList(
            _build_child(a, f"model.auxiliary_head[{i}]", in_channels=channels, num_classes=num_classes)
            for i, a in enumerate(aux)
        )
        self.data_preprocessor = (
            data_preprocessor if data_preprocessor is not None else _default_preprocessor()
        )
        self.align_corners = align_corners
        self.tta: TTASettings | None = None
        self.set_test_mode(test_mode, crop_size, stride)

    # --- evaluation settings (kept outside the model config) -----------------------------------
    def set_test_mode(
        self,
        mode: TestMode = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        tta: TTASettings | None = None,
    ) -> None:
        """Choose whole or sliding-window inference and optional TTA.

        Raises:
            ConfigError: unknown mode, or "slide" without ``crop_size`` and ``stride``.
        """
        if mode not in ("whole", "slide"):
            raise ConfigError(f"test_mode: unknown mode {mode!r}; expected 'whole' or 'slide'")
        if mode == "slide" and (crop_size is None or stride is None):
            raise ConfigError(
                "test_mode: 'slide' needs crop_size and stride, e.g. crop_size: [512, 512], stride: [341, 341]"
            )
        self.test_mode = mode
        self.crop_size = None if crop_size is None else tuple(crop_size)
        self.stride = None if stride is None else tuple(stride)
        self.tta = tta

    @property
    def test_description(self) -> str:
        """How predictions are computed, for metric reports."""
        text = (
            "whole image"
            if self.test_mode == "whole"
            else f"slide crop {self.crop_size} stride {self.stride}"
        )
        if self.tta is not None and (list(self.tta.scales) != [1.0] or self.tta.flip):
            text += f", TTA scales {list(self.tta.scales)} flip {self.tta.flip}"
        return text

    # --- forward -------------------------------------------------------------------------------
    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone (+ neck) feature maps, fine to coarse."""
        feats = self.backbone(images)
        return list(self.neck(feats)) if self.neck is not None else list(feats)

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) decode-head logits resized to the images' size."""
        logits = self.decode_head(self.extract_features(images))
        return resize_bilinear(logits, images.shape[-2:], self.align_corners)

    def forward(self, batch: Batch, mode: str = "loss") -> dict[str, torch.Tensor] | list[SemanticPrediction]:
        """``mode="loss"``: named losses; ``"predict"``: predictions at original resolution; ``"tensor"``: raw logits."""
        if mode == "loss":
            return self.loss(batch)
        if mode == "predict":
            return self.predict(batch)
        if mode == "tensor":
            return self.decode_head(self.extract_features(batch.images))  # type: ignore[return-value]
        raise ModelError(f"EncoderDecoder.forward: unknown mode {mode!r}; expected loss, predict or tensor")

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Decode-head losses (``loss_ce``, ``acc_seg``) plus auxiliary ones (``loss_aux_ce``, ``aux_acc_seg``)."""
        if batch.semantic is None:
            raise ModelError(
                "EncoderDecoder: the training batch has no semantic label maps; use a semantic dataset"
            )
        feats = self.extract_features(batch.images)
        label = batch.semantic.long()
        losses = dict(self.decode_head.loss(self.decode_head(feats), label))
        for i, head in enumerate(self.auxiliary_heads):
            tag = "aux" if len(self.auxiliary_heads) == 1 else f"aux{i}"
            for key, value in head.loss(head(feats), label).items():
                losses[self.aux_key(tag, key)] = value
        return losses

    @staticmethod
    def aux_key(tag: str, key: str) -> str:
        """Log key of an auxiliary head's value: ``loss_ce`` -> ``loss_aux_ce``, ``acc_seg`` -> ``aux_acc_seg``.

        Optimised keys must keep the ``loss`` prefix (the contract: keys starting with ``loss`` are
        summed), so the tag goes after it rather than in front as MMSeg's ``aux.loss_ce`` does.
        """
        if key.startswith("loss"):
            return f"loss_{tag}_{key.removeprefix('loss').lstrip('_')}"
        return f"{tag}_{key}"

    def inference(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the images' size, whole or sliding window."""
        if self.test_mode == "slide":
            assert self.crop_size is not None and self.stride is not None
            return slide_inference(
                self.encode_decode, images, self.crop_size, self.stride, self.decode_head.out_channels
            )
        return self.encode_decode(images)

    def padded_inference(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`inference` on ``images`` padded to the preprocessor's ``size_divisor`` (bottom and
        right, with its ``pad_val``), cropped back to the images' size.

        TTA views are cut out of the padded batch and rescaled, so each is padded again the way the
        data preprocessor pads a batch: an image smaller than the network's stride then predicts in
        TTA as it does without (MMSeg's TTA pipeline pads every view through the preprocessor too).
        """
        divisor = getattr(self.data_preprocessor, "size_divisor", None) or 1
        h, w = images.shape[-2:]
        ph, pw = -(-h // divisor) * divisor, -(-w // divisor) * divisor
        if (ph, pw) == (h, w):
            return self.inference(images)
        pad_val = float(getattr(self.data_preprocessor, "pad_val", 0.0))
        padded = F.pad(images, (0, pw - w, 0, ph - h), value=pad_val)
        return self.inference(padded)[..., :h, :w]

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[SemanticPrediction]:
        """One :class:`SemanticPrediction` per image: padding cropped (``img_shape``), resized to ``ori_shape``."""
        if self.tta is None:
            batch_logits = self.inference(batch.images)
        predictions = []
        for i, meta in enumerate(batch.metas):
            h, w = meta.img_shape if meta.img_shape[0] > 0 else tuple(batch.images.shape[-2:])
            if self.tta is None:
                logits = batch_logits[i : i + 1, :, :h, :w]
            else:
                probs = tta_inference(
                    self.padded_inference,
                    batch.images[i : i + 1, :, :h, :w],
                    self.tta.scales,
                    self.tta.flip,
                    self.align_corners,
                )
                logits = self._probs_to_logits(probs)
            if meta.flip:  # a flipping test pipeline: map the prediction back to the source image
                logits = logits.flip(-1)
            ori = meta.ori_shape if meta.ori_shape[0] > 0 else (h, w)
            if tuple(logits.shape[-2:]) != tuple(ori):
                logits = F.interpolate(logits, size=ori, mode="bilinear", align_corners=self.align_corners)
            label_map = self.decode_head.predict_labels(logits)[0]
            predictions.append(SemanticPrediction(label_map=label_map, meta=meta, logits=logits[0]))
        return predictions

    @staticmethod
    def _probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
        """Averaged TTA probabilities back to logits (log-probs; logit for one channel) so argmax/threshold agree."""
        probs = probs.clamp(1e-12, 1 - 1e-7) if probs.shape[1] == 1 else probs.clamp_min(1e-12)
        return torch.logit(probs) if probs.shape[1] == 1 else probs.log()
