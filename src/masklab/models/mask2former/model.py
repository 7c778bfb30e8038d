"""Mask2Former with per-query attribute heads: backbone -> pixel decoder -> masked decoder -> heads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from masklab.config.lazy import Lazy
from masklab.config.registries import MODELS
from masklab.errors import ModelError
from masklab.models.mask2former.attribute_spec import AttributeSpec, as_attribute_specs
from masklab.models.mask2former.criterion import Mask2FormerCriterion
from masklab.models.mask2former.decoder import Mask2FormerTransformerDecoder
from masklab.models.mask2former.outputs import Mask2FormerOutput
from masklab.models.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from masklab.models.mask2former.postprocess import Mask2FormerPostProcessor
from masklab.models.mask2former.targets import Mask2FormerTargets
from masklab.structures import Batch, InstancePrediction, Instances, SemanticPrediction

TEST_MODES = ("instance", "semantic", "panoptic")


@MODELS.register()
class Mask2Former(nn.Module):
    """Mask2Former for instance / semantic / panoptic segmentation with attribute heads.

    Args:
        backbone: a module with ``feature_info`` (channels and strides 4, 8, 16, 32) returning 4 maps.
        num_classes: C real classes (from the dataset metadata when the config leaves it out).
        attributes: one :class:`AttributeSpec` (or mapping of its fields) per attribute; None (a
            config's ``null`` or no key) = derived from the dataset metadata by the builder, none
            when the model is built without metadata.
        pixel_decoder: deferred :class:`MSDeformAttnPixelDecoder`; ``in_channels`` is supplied here.
        decoder: deferred :class:`Mask2FormerTransformerDecoder`; channels, classes and attributes supplied here.
        class_weight: class loss / cost weight.
        mask_weight: mask BCE loss / cost weight.
        dice_weight: dice loss / cost weight.
        eos_coef: "no object" weight of the class CE.
        num_points: sampled points per mask in matching and losses.
        oversample_ratio: importance sampling candidates per point.
        importance_sample_ratio: share of points picked by uncertainty.
        test_topk: instances per image at inference; feeds the evaluator's ``maxDets`` too.
        test_mode: ``instance``, ``semantic`` or ``panoptic``.
        ranking: instance score, see :class:`Mask2FormerPostProcessor`.
        min_class_score: instance filter.
        min_attribute_score: instance filter.
        attribute_no_object: ``unknown`` or ``drop``.
        duplicate_iou: optional mask-IoU duplicate suppression (off for metrics).
        object_mask_threshold: panoptic setting.
        overlap_threshold: panoptic setting.
        stuff_classes: panoptic stuff classes.
        data_preprocessor: defaults to ``masklab.data.loader.DataPreprocessor`` (ImageNet mean/std, divisor 32).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        attributes: Sequence[AttributeSpec] | None = None,
        pixel_decoder: Lazy[MSDeformAttnPixelDecoder] | Callable[..., MSDeformAttnPixelDecoder] | None = None,
        decoder: Lazy[Mask2FormerTransformerDecoder]
        | Callable[..., Mask2FormerTransformerDecoder]
        | None = None,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        test_topk: int = 100,
        test_mode: str = "instance",
        ranking: str = "class",
        min_class_score: float = 0.0,
        min_attribute_score: float = 0.0,
        attribute_no_object: str = "unknown",
        duplicate_iou: float | None = None,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        stuff_classes: Sequence[int] = (),
        data_preprocessor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if test_mode not in TEST_MODES:
            raise ModelError(f"model.test_mode: {test_mode!r} is not one of {TEST_MODES}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"model.num_classes: expected an integer >= 1, got {num_classes!r}")
        info = getattr(backbone, "feature_info", None)
        if info is None or list(info.strides) != [4, 8, 16, 32]:
            strides = None if info is None else list(info.strides)
            raise ModelError(
                f"model.backbone: Mask2Former needs feature maps at strides [4, 8, 16, 32], got {strides}"
            )
        self.num_classes = num_classes
        self.attributes = as_attribute_specs(attributes)
        self.test_mode = test_mode
        if data_preprocessor is None:
            from masklab.data.loader import DataPreprocessor  # lazy: models never import data at module load

            data_preprocessor = DataPreprocessor(
                mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), size_divisor=32
            )
        self.data_preprocessor = data_preprocessor
        self.backbone = backbone
        build_pixel = pixel_decoder if pixel_decoder is not None else MSDeformAttnPixelDecoder
        self.pixel_decoder = build_pixel(in_channels=list(info.channels))
        build_decoder = decoder if decoder is not None else Mask2FormerTransformerDecoder
        self.decoder = build_decoder(
            in_channels=self.pixel_decoder.conv_dim,
            mask_dim=self.pixel_decoder.mask_dim,
            num_levels=len(self.pixel_decoder.out_strides),
            num_classes=num_classes,
            attributes=self.attributes,
        )
        self.criterion = Mask2FormerCriterion(
            num_classes,
            self.attributes,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            eos_coef=eos_coef,
            num_points=num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
        )
        self.postprocessor = Mask2FormerPostProcessor(
            num_classes,
            self.attributes,
            test_topk=test_topk,
            ranking=ranking,
            min_class_score=min_class_score,
            min_attribute_score=min_attribute_score,
            attribute_no_object=attribute_no_object,
            duplicate_iou=duplicate_iou,
            object_mask_threshold=object_mask_threshold,
            overlap_threshold=overlap_threshold,
            stuff_classes=stuff_classes,
        )

    @property
    def test_topk(self) -> int:
        """Instances per image at inference; evaluators read it so that ``maxDets`` agrees."""
        return self.postprocessor.test_topk

    def set_test_mode(
        self, mode: str = "whole", crop_size: Any = None, stride: Any = None, tta: Any = None
    ) -> None:
        """Evaluation settings (``evaluate`` / ``inference``): Mask2Former predicts whole images only.

        Raises:
            ConfigError: sliding windows or test-time augmentation, which would otherwise be ignored.
        """
        from masklab.errors import ConfigError

        if mode != "whole":
            raise ConfigError(
                f"evaluate.mode / inference.mode: {mode!r} is not supported by Mask2Former, which predicts "
                "whole images; use mode: whole"
            )
        if tta is not None:
            raise ConfigError(
                f"evaluate.tta / inference.tta: scales {list(tta.scales)}, flip {tta.flip} is not supported "
                "by Mask2Former (no test-time augmentation); leave scales [1.0] and flip false"
            )

    def predict_outputs(
        self,
        images: torch.Tensor,
        all_layers: bool = True,
        targets: Sequence[Mask2FormerTargets] | None = None,
    ) -> Mask2FormerOutput:
        """Raw decoder outputs for (B, 3, H, W) preprocessed images (H, W multiples of 32).

        ``all_layers=False`` returns only the final prediction point and skips the intermediate
        layers' full-resolution masks (what inference needs; the final outputs are the same).
        ``targets`` (training) feed the decoder's mask piloting when it is configured.
        """
        features = self.backbone(images)
        pixel = self.pixel_decoder(features)
        return self.decoder(
            pixel.multi_scale_features, pixel.mask_features, all_layers=all_layers, targets=targets
        )

    def forward(self, batch: Batch, mode: str = "loss") -> dict[str, torch.Tensor] | list[Any]:
        """``mode="loss"``: weighted losses (see :mod:`.criterion` for names); ``mode="predict"``: predictions."""
        if mode == "loss":
            if batch.instances is None:
                raise ModelError(
                    "model: Mask2Former training needs instance annotations (batch.instances is None)"
                )
            self.validate_instances(batch.instances)
            names = tuple(s.name for s in self.attributes)
            targets = Mask2FormerTargets.from_batch(batch.instances, names)
            outputs = self.predict_outputs(batch.images, targets=targets)
            return self.criterion(outputs, targets)
        if mode == "predict":
            return self.predict(batch)
        raise ModelError(f"model.forward: mode {mode!r} is not 'loss' or 'predict'")

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[InstancePrediction] | list[SemanticPrediction]:
        """Predictions at each image's original resolution, per ``test_mode``."""
        out = self.predict_outputs(batch.images, all_layers=False).last
        pad_size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        post = getattr(self.postprocessor, self.test_mode)
        return [post(out, i, meta, pad_size) for i, meta in enumerate(batch.metas)]

    def validate_instances(self, instances: Sequence[Instances]) -> None:
        """One-line :class:`ModelError` for labels or attribute values the heads cannot represent.

        The value ranges of the whole batch are checked with one host read (one stream
        synchronisation on CUDA); the per-image search for the message runs only on a failure.
        """
        specs = {s.name: s for s in self.attributes}
        flags = []
        for i, inst in enumerate(instances):
            if len(inst) == 0:
                continue
            flags.append(((inst.labels < 0) | (inst.labels >= self.num_classes)).any())
            for name, spec in specs.items():
                if name not in inst.attributes:
                    raise ModelError(
                        f"batch image {i}: instances lack attribute {name!r} declared in model.attributes"
                    )
                values = inst.attributes[name]
                flags.append(((values < -1) | (values >= spec.num_values)).any())
            extra = sorted(set(inst.attributes) - set(specs))
            if extra:
                raise ModelError(
                    f"batch image {i}: attribute {extra[0]!r} is not declared in model.attributes"
                )
        if flags and bool(torch.stack(flags).any()):
            self._raise_invalid_values(instances, specs)

    def _raise_invalid_values(self, instances: Sequence[Instances], specs: dict[str, AttributeSpec]) -> None:
        """The first out-of-range class label or attribute value, as a one-line :class:`ModelError`."""
        for i, inst in enumerate(instances):
            if len(inst) == 0:
                continue
            labels = inst.labels
            bad = (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                raise ModelError(
                    f"batch image {i}: class label {int(labels[bad][0])} outside [0, {self.num_classes}) "
                    f"(model.num_classes={self.num_classes}; the no-object slot is not a class)"
                )
            for name, spec in specs.items():
                values = inst.attributes[name]
                bad = (values < -1) | (values >= spec.num_values)
                if bad.any():
                    raise ModelError(
                        f"batch image {i}: attribute {name!r} value {int(values[bad][0])} outside "
                        f"[0, {spec.num_values}) (-1 = unlabelled)"
                    )
