"""MALModel: the Mask Auto-Labeler (phase 1), trained from boxes only, labeling one mask per box."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import MODELS
from masklab.errors import ConfigError
from masklab.models.mal.crf import RegionRefinement, color_affinities, mean_field_target, refine_probs
from masklab.models.mal.labeling import label_regions, regions_to_masks
from masklab.models.mal.losses import crf_self_training_loss, mil_projection_loss
from masklab.models.mal.network import MalNetwork
from masklab.models.mal.preprocess import MalDataPreprocessor
from masklab.models.mal.teacher import EmaTeacher
from masklab.structures.box_crops import BoxCrop, MalBatch, rasterize_boxes
from masklab.structures.instances import masks_to_boxes
from masklab.structures.predictions import InstancePrediction
from masklab.structures.sample import SampleMeta


@MODELS.register()
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CPU with AMX or AVX512-BF16, or a CUDA GPU
    with bf16 support (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cpu":  # torch's private CPU-feature probes; absent in a future torch: no
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return False


class MALModel(nn.Module):
    """Box-conditioned mask labeler: a student network, its EMA teacher, MIL + CRF losses.

    ``forward(batch, "loss")`` takes a preprocessed :class:`MalBatch` and returns ``loss_mil`` and
    ``loss_crf`` (already weighted and ramped) plus ``crf_fg_ratio`` (logged only: the share of box
    pixels the CRF target keeps; near 1 means masks degenerate to the box). ``forward(batch,
    "predict")`` returns one :class:`InstancePrediction` per source image present in the batch,
    one mask per crop, pasted back at the image's resolution (``source_ids`` = annotation ids).

    The teacher is updated from the student at the start of every training ``loss`` forward but
    the first, i.e. once after each optimiser step (with gradient accumulation, once per
    micro-batch). ``iteration`` (a buffer, saved in checkpoints) drives the loss ramps.

    Args:
        backbone: encoder with ``feature_info`` (``MalViTEncoder``, ``MalTinyEncoder``, a CNN).
        feature_index: which backbone map feeds the heads.
        mask_head_num_convs: pixel-head conv layers.
        mask_head_hidden_channel: head width.
        mask_head_out_channel: dimension of the instance / pixel dot product.
        mask_scale_ratio: pixel-head upsampling factor.
        not_adjust_scale: disable the small / medium / large feature-resolution routing.
        teacher_momentum: EMA momentum of the teacher.
        loss_mil_weight: weight of the MIL projection loss.
        loss_crf_weight: weight of the CRF self-training loss.
        loss_mil_step: iterations over which the MIL weight ramps linearly from 0 (0: no ramp).
        loss_crf_step: iterations over which the CRF weight ramps linearly from 0 (0: no ramp).
        crf_kernel_size: side of the CRF neighbourhood (odd).
        crf_zeta: colour bandwidth of the affinities (normalised-image units).
        crf_num_iter: mean-field iterations.
        crf_value_low_thres: lower clamp of the CRF probabilities.
        crf_value_high_thres: upper clamp of the CRF probabilities.
        mask_thres: labeling threshold: one value, or three for small / medium / large boxes.
        data_preprocessor: normalisation (ImageNet mean/std by default).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_index: int = -1,
        mask_head_num_convs: int = 4,
        mask_head_hidden_channel: int = 256,
        mask_head_out_channel: int = 256,
        mask_scale_ratio: float = 2.0,
        not_adjust_scale: bool = False,
        teacher_momentum: float = 0.996,
        loss_mil_weight: float = 4.0,
        loss_crf_weight: float = 0.5,
        loss_mil_step: int = 1000,
        loss_crf_step: int = 4000,
        crf_kernel_size: int = 3,
        crf_zeta: float = 0.1,
        crf_num_iter: int = 100,
        crf_value_low_thres: float = 0.1,
        crf_value_high_thres: float = 0.9,
        mask_thres: Sequence[float] = (0.1,),
        data_preprocessor: MalDataPreprocessor | None = None,
    ) -> None:
        super().__init__()
        check_settings(
            teacher_momentum,
            crf_kernel_size,
            crf_zeta,
            crf_num_iter,
            crf_value_low_thres,
            crf_value_high_thres,
            mask_thres,
            loss_mil_step,
            loss_crf_step,
        )
        self.data_preprocessor = data_preprocessor or MalDataPreprocessor()
        self.student = MalNetwork(
            backbone,
            feature_index=feature_index,
            num_convs=mask_head_num_convs,
            hidden_channels=mask_head_hidden_channel,
            out_channels=mask_head_out_channel,
            scale_ratio=mask_scale_ratio,
            adjust_scale=not not_adjust_scale,
        )
        self.teacher = EmaTeacher(self.student, teacher_momentum)
        self.loss_mil_weight = float(loss_mil_weight)
        self.loss_crf_weight = float(loss_crf_weight)
        self.loss_mil_step = int(loss_mil_step)
        self.loss_crf_step = int(loss_crf_step)
        self.crf_kernel_size = int(crf_kernel_size)
        self.crf_zeta = float(crf_zeta)
        self.crf_num_iter = int(crf_num_iter)
        self.crf_low = float(crf_value_low_thres)
        self.crf_high = float(crf_value_high_thres)
        self.mask_thres = tuple(float(t) for t in mask_thres)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.labeling_network = "student"
        self.labeling_flip = False
        self.labeling_refine_iter = 0
        self.labeling_refine_scale = 2
        self.labeling_refine_space = "crop"
        self.labeling_refine_kernel_size = self.crf_kernel_size
        self.labeling_refine_dilation = 1
        self.labeling_precision = "fp32"

    def set_labeling(
        self,
        *,
        network: str = "student",
        flip: bool = False,
        refine_iter: int = 0,
        refine_scale: int = 2,
        refine_space: str = "crop",
        refine_kernel_size: int | None = None,
        refine_dilation: int = 1,
        precision: str = "fp32",
    ) -> None:
        """Which network labels (TAO ``use_teacher_test`` / ``use_mixed_model_test``), flip TTA and
        the colour refinement of the labels (masklab's ``crf_refine_*``).

        Args:
            network: ``student``, ``teacher`` or ``mixed`` (mean of both probabilities).
            flip: average with the prediction on the horizontally flipped crop (``use_flip_test``).
            refine_iter: mean-field iterations of the colour refinement (0: off), with the
                training CRF's zeta and clamps.
            refine_scale: ``crop`` space only: the upsampling of the crop's probability map (>= 1)
                (:func:`~masklab.models.mal.crf.refine_probs`).
            refine_space: ``crop``: refine the crop's probabilities against the resized crop;
                ``image``: refine the probabilities pasted back to the image against the image's
                own pixels around each box (:func:`~masklab.models.mal.crf.refine_box_regions`).
            refine_kernel_size: the refinement's odd neighbourhood side (None: the training
                CRF's ``crf_kernel_size``).
            refine_dilation: ``image`` space only: the spacing of the kernel's taps (a 5-tap
                kernel with dilation 3 reads 13x13 pixels for the cost of 5x5).
            precision: ``fp32``, ``bf16`` (the labeling network's forward under bf16 autocast;
                probabilities returned in fp32, everything after the forward stays fp32) or
                ``auto`` (bf16 where the device runs it natively: :func:`native_bf16`).
        """
        if network not in ("student", "teacher", "mixed"):
            raise ConfigError(
                f"MALModel.set_labeling: network must be student, teacher or mixed, got {network!r}"
            )
        if refine_iter < 0 or refine_scale < 1:
            raise ConfigError(
                "evaluate.crf_refine_iter / crf_refine_scale: expected >= 0 and >= 1, "
                f"got {refine_iter}, {refine_scale}"
            )
        if refine_space not in ("crop", "image"):
            raise ConfigError(f"evaluate.crf_refine_space: expected crop or image, got {refine_space!r}")
        kernel = self.crf_kernel_size if refine_kernel_size is None else int(refine_kernel_size)
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"evaluate.crf_refine_kernel_size: expected an odd size >= 1, got {kernel}")
        if refine_dilation < 1:
            raise ConfigError(f"evaluate.crf_refine_dilation: expected >= 1, got {refine_dilation}")
        if precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"evaluate.labeling_precision: expected fp32, bf16 or auto, got {precision!r}")
        self.labeling_network = network
        self.labeling_flip = bool(flip)
        self.labeling_refine_iter = int(refine_iter)
        self.labeling_refine_scale = int(refine_scale)
        self.labeling_refine_space = refine_space
        self.labeling_refine_kernel_size = kernel
        self.labeling_refine_dilation = int(refine_dilation)
        self.labeling_precision = precision

    @property
    def image_refinement(self) -> RegionRefinement | None:
        """The label refinement at image resolution, or None (off, or in crop space)."""
        if self.labeling_refine_iter == 0 or self.labeling_refine_space != "image":
            return None
        return RegionRefinement(
            num_iter=self.labeling_refine_iter,
            kernel_size=self.labeling_refine_kernel_size,
            zeta=self.crf_zeta,
            low=self.crf_low,
            high=self.crf_high,
            dilation=self.labeling_refine_dilation,
            pixel_mean=tuple(self.data_preprocessor.mean.flatten().tolist()),
            pixel_std=tuple(self.data_preprocessor.std.flatten().tolist()),
        )

    def _label_probs(self, images: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
        """Crop probabilities from the labeling network(s), flip-averaged when asked."""

        def run(x: torch.Tensor) -> torch.Tensor:
            nets = {
                "student": [self.student],
                "teacher": [self.teacher],
                "mixed": [self.student, self.teacher],
            }
            bf16 = self.labeling_precision == "bf16" or (
                self.labeling_precision == "auto" and native_bf16(x.device)
            )
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                probs = [net(x, areas).float().sigmoid() for net in nets[self.labeling_network]]
            return torch.stack(probs).mean(0)

        probs = run(images)
        if self.labeling_flip:
            probs = (probs + run(images.flip(-1)).flip(-1)) / 2
        if self.labeling_refine_iter > 0 and self.labeling_refine_space == "crop":
            probs = refine_probs(
                probs,
                images,
                scale=self.labeling_refine_scale,
                kernel_size=self.labeling_refine_kernel_size,
                zeta=self.crf_zeta,
                num_iter=self.labeling_refine_iter,
                low=self.crf_low,
                high=self.crf_high,
            )
        return probs

    def forward(
        self, batch: MalBatch, mode: str = "loss"
    ) -> dict[str, torch.Tensor] | list[InstancePrediction]:
        if mode == "loss":
            return self.loss(batch)
        if mode == "predict":
            return self.predict(batch)
        raise ValueError(f"MALModel.forward: mode must be 'loss' or 'predict', got {mode!r}")

    @staticmethod
    def _box_areas(batch: MalBatch) -> torch.Tensor:
        boxes = torch.stack([c.image_box for c in batch.crops]).to(batch.images.device)
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def _ramp(self, steps: int) -> float:
        return 1.0 if steps <= 0 else min(1.0, float(self.iteration) / steps)

    def loss(self, batch: MalBatch) -> dict[str, torch.Tensor]:
        """Weighted, ramped MIL and CRF losses. Reads only the crops, boxes and box areas: no GT mask."""
        if self.training and int(self.iteration) > 0:
            self.teacher.update(self.student)
        areas = self._box_areas(batch)
        logits = self.student(batch.images, areas)
        probs = logits.sigmoid()
        h, w = probs.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=batch.boxes.dtype, device=batch.boxes.device) / torch.tensor(
            [batch.images.shape[-1], batch.images.shape[-2]] * 2,
            dtype=batch.boxes.dtype,
            device=batch.boxes.device,
        )
        box_masks = rasterize_boxes(batch.boxes * scale, h, w)
        loss_mil = mil_projection_loss(probs, box_masks).mean()

        with torch.no_grad():
            teacher_probs = self.teacher(batch.teacher_images, areas).sigmoid()
            # Affinities on the clean view: colour jitter would move the edges the CRF follows.
            small = F.interpolate(
                batch.teacher_images.float(), size=(h, w), mode="bilinear", align_corners=False
            )
            affinity = color_affinities(small, self.crf_kernel_size, self.crf_zeta)
            target = mean_field_target(
                (probs.detach() + teacher_probs) / 2,
                affinity,
                box_masks,
                kernel_size=self.crf_kernel_size,
                num_iter=self.crf_num_iter,
                low=self.crf_low,
                high=self.crf_high,
            )
            fg_ratio = target.flatten(1).sum(1).float() / box_masks.flatten(1).sum(1).clamp(min=1)
        loss_crf = crf_self_training_loss(probs, target).mean()
        out = {
            "loss_mil": self.loss_mil_weight * self._ramp(self.loss_mil_step) * loss_mil,
            "loss_crf": self.loss_crf_weight * self._ramp(self.loss_crf_step) * loss_crf,
            "crf_fg_ratio": fg_ratio.mean(),
        }
        if self.training:
            self.iteration += 1
        return out

    @torch.inference_mode()
    def predict(self, batch: MalBatch, *, chunk_size: int | None = None) -> list[InstancePrediction]:
        """One prediction per source image in the batch (first-appearance order), masks at image resolution.

        Args:
            batch: preprocessed crops (several images may share the batch).
            chunk_size: at most this many crops per forward (None: the whole batch at once).
        """
        if len(batch) == 0:
            return []
        areas = self._box_areas(batch)
        step = chunk_size or len(batch)
        probs = torch.cat(
            [
                self._label_probs(batch.images[i : i + step], areas[i : i + step]).float().cpu()
                for i in range(0, len(batch), step)
            ]
        )
        groups: dict[int, list[int]] = {}
        for i, crop in enumerate(batch.crops):
            groups.setdefault(crop.image_id, []).append(i)
        refinement = self.image_refinement
        preds = []
        for image_id, idx in groups.items():
            crops = [batch.crops[i] for i in idx]
            image_boxes = torch.stack([c.image_box for c in crops]).float()
            fg, regions = label_regions(
                probs[idx],
                [c.window for c in crops],
                image_boxes,
                self.mask_thres,
                refinement=refinement,
                pixels=self._region_pixels(crops) if refinement is not None else None,
            )
            size = crops[0].window.image_size
            masks = torch.from_numpy(np.stack(regions_to_masks(fg, regions, [size] * len(crops))))
            # Ranking score: the detector's score when boxes came from one, else the mean mask probability.
            mean_prob = (regions.probs * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1)
            scores = torch.tensor(
                [c.score if c.score is not None else float(p) for c, p in zip(crops, mean_prob, strict=True)]
            )
            preds.append(
                InstancePrediction(
                    masks=masks,
                    boxes=masks_to_boxes(masks),
                    labels=torch.tensor([c.label for c in crops], dtype=torch.int64),
                    scores=scores.float(),
                    meta=SampleMeta(
                        image_id=image_id, file_name=crops[0].file_name, ori_shape=size, img_shape=size
                    ),
                    source_ids=torch.tensor([c.ann_id for c in crops], dtype=torch.int64),
                )
            )
        return preds

    @staticmethod
    def _region_pixels(crops: list[BoxCrop]) -> list[torch.Tensor]:
        """The crops' image regions (read by the refinement at image resolution)."""
        missing = [c.ann_id for c in crops if c.region is None]
        if missing:
            raise ValueError(
                f"MALModel.predict: evaluate.crf_refine_space image needs each crop's image region "
                f"(BoxCropDataset(region_pad=...)); annotation id={missing[0]} has none"
            )
        return [c.region for c in crops if c.region is not None]


def check_settings(
    momentum: float,
    kernel_size: int,
    zeta: float,
    num_iter: int,
    low: float,
    high: float,
    mask_thres: Sequence[float],
    mil_step: int,
    crf_step: int,
) -> None:
    """One-line ConfigErrors for values the recipe cannot run with."""
    if not 0.5 <= momentum < 1.0:
        # TAO's convention (the teacher's own share per step), the opposite of train.ema.momentum's.
        raise ConfigError(
            f"model.teacher_momentum: expected a decay in [0.5, 1) (the teacher's share per step, "
            f"TAO's convention: 0.996), got {momentum}; for the student's share s write 1 - s"
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"train.crf_kernel_size: expected an odd size >= 1, got {kernel_size}")
    if zeta <= 0:
        raise ConfigError(f"train.crf_zeta: expected a positive colour bandwidth, got {zeta}")
    if num_iter < 0:
        raise ConfigError(f"train.crf_num_iter: expected >= 0, got {num_iter}")
    if not 0.0 < low < 0.5 < high < 1.0:
        raise ConfigError(
            f"train.crf_value_low_thres/crf_value_high_thres: expected 0 < low < 0.5 < high < 1, got {low}, {high}"
        )
    if len(mask_thres) not in (1, 3) or not all(0.0 <= t < 1.0 for t in mask_thres):
        raise ConfigError(f"train.mask_thres: expected 1 or 3 values in [0, 1), got {list(mask_thres)}")
    if mil_step < 0 or crf_step < 0:
        raise ConfigError(f"train.loss_mil_step/loss_crf_step: expected >= 0, got {mil_step}, {crf_step}")
