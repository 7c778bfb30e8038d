"""The base of every semantic decode head: input selection, classifier, loss and accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import nn

from masklab.errors import ModelError
from masklab.models.layers.conv_module import NormType
from masklab.models.layers.resize import resize_bilinear
from masklab.models.losses.cross_entropy import CrossEntropyLoss
from masklab.models.semantic.resized_levels import ResizedLevels

InputTransform = Literal["resize_concat", "multiple_select"]


class PixelSampler(Protocol):
    """Chooses which pixels train (e.g. OHEM): returns (B, H, W) float weights for the loss."""

    def __call__(self, seg_logits: torch.Tensor, seg_label: torch.Tensor) -> torch.Tensor: ...


class DecodeHead(nn.Module):
    """Common behaviour of semantic heads (MMSeg ``BaseDecodeHead`` semantics).

    Subclasses build their layers from ``self.in_channels`` / ``self.channels`` and implement
    :meth:`forward`, ending with :meth:`cls_seg`.

    Args:
        in_channels: channels of *every* backbone (or neck) level; derived and passed by the parent.
        in_index: which level(s) the head reads.
        channels: width of the head's inner layers.
        num_classes: number of classes; passed by the parent model.
        dropout_ratio: dropout before the classifier.
        align_corners: ``align_corners`` of every bilinear resize.
        loss_decode: the losses summed into training (each logged under its ``loss_name``);
            None = a single :class:`CrossEntropyLoss` (sigmoid in binary mode).
        sampler: optional pixel sampler (OHEM) giving per-pixel loss weights.
        ignore_index: label excluded from loss and accuracy.
        binary: one output channel with sigmoid + ``threshold`` instead of ``num_classes`` softmax
            channels; ``num_classes`` must then be 1 or 2 (background + foreground).
        threshold: foreground probability threshold in binary mode.
        norm: normalisation of the inner conv blocks.
        input_transform: None (one level), "resize_concat" (levels resized to the first one and
            concatenated) or "multiple_select" (a list of levels).
    """

    def __init__(
        self,
        in_channels: list[int],
        channels: int,
        num_classes: int,
        in_index: int | list[int] = -1,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        loss_decode: nn.Module | list[nn.Module] | None = None,
        sampler: PixelSampler | None = None,
        ignore_index: int = 255,
        binary: bool = False,
        threshold: float = 0.5,
        norm: NormType | None = "bn",
        input_transform: InputTransform | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.binary = binary
        self.out_channels = self._check_classes(num_classes, binary)
        self.channels = channels
        self.align_corners = align_corners
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.norm = norm
        self.input_transform = input_transform
        self.in_index = in_index
        self.in_channels = self._select_channels(list(in_channels), in_index, input_transform)
        self.sampler = sampler
        self.loss_decode = self._build_losses(loss_decode)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, self.out_channels, kernel_size=1)

    # --- construction checks -------------------------------------------------------------------
    @staticmethod
    def _check_classes(num_classes: int, binary: bool) -> int:
        if binary:
            if num_classes not in (1, 2):
                raise ModelError(
                    f"decode_head: binary=true needs num_classes 1 or 2 (background + foreground), got {num_classes}"
                )
            return 1
        if num_classes == 1:
            raise ModelError(
                "decode_head: num_classes=1 with softmax cannot learn anything; for foreground/background set "
                "`binary: true` (sigmoid + threshold) or use num_classes=2"
            )
        if num_classes < 1:
            raise ModelError(f"decode_head: num_classes must be >= 2, got {num_classes}")
        return num_classes

    @staticmethod
    def _select_channels(
        in_channels: list[int], in_index: int | list[int], transform: InputTransform | None
    ) -> int | list[int]:
        n = len(in_channels)
        indices = [in_index] if isinstance(in_index, int) else list(in_index)
        for i in indices:
            if not -n <= i < n:
                raise ModelError(f"decode_head.in_index: {i} is out of range for {n} feature levels")
        if transform is None:
            if not isinstance(in_index, int):
                raise ModelError(
                    "decode_head.in_index: a list needs input_transform 'resize_concat' or 'multiple_select'"
                )
            return in_channels[in_index]
        if isinstance(in_index, int):
            raise ModelError(f"decode_head.in_index: input_transform {transform!r} needs a list of indices")
        if transform == "resize_concat":
            return sum(in_channels[i] for i in indices)
        if transform == "multiple_select":
            return [in_channels[i] for i in indices]
        raise ModelError(
            f"decode_head.input_transform: unknown {transform!r}; expected resize_concat or multiple_select"
        )

    def _build_losses(self, loss_decode: nn.Module | list[nn.Module] | None) -> nn.ModuleList:
        if loss_decode is None:
            losses: list[nn.Module] = [CrossEntropyLoss(use_sigmoid=self.binary)]
        elif isinstance(loss_decode, nn.Module):
            losses = [loss_decode]
        else:
            losses = list(loss_decode)
        if not losses:
            raise ModelError("decode_head.loss_decode: empty list; give at least one loss")
        for i, loss in enumerate(losses):
            where = f"decode_head.loss_decode[{i}]"
            if not hasattr(loss, "loss_name"):
                raise ModelError(f"{where}: {type(loss).__name__} has no loss_name")
            if self.binary and getattr(loss, "use_sigmoid", True) is False:
                raise ModelError(
                    f"{where}: binary=true predicts one channel; set `use_sigmoid: true` on the loss"
                )
            check = getattr(loss, "check_num_classes", None)
            if check is not None:
                check(self.out_channels, where)
        return nn.ModuleList(losses)

    # --- forward helpers -----------------------------------------------------------------------
    def transform_inputs(self, features: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Pick (and for ``resize_concat`` resize and concatenate) the levels this head reads."""
        if self.input_transform is None:
            assert isinstance(self.in_index, int)
            return features[self.in_index]
        assert not isinstance(self.in_index, int)
        selected = [features[i] for i in self.in_index]
        if self.input_transform == "multiple_select":
            return selected
        return ResizedLevels(tuple(selected), tuple(selected[0].shape[-2:]), self.align_corners).concat()

    def resized_levels(self, features: Sequence[torch.Tensor]) -> ResizedLevels | None:
        """The ``resize_concat`` input not yet built, for heads whose first layer is linear in it and
        can run level by level (:class:`ResizedLevels`); None without ``resize_concat``, off the CPU
        (the level-by-level path is measured faster on the CPU only; on a GPU the built
        concatenation is cheap), and while tracing or exporting (the graph then keeps the plain
        concatenation)."""
        if (
            self.input_transform != "resize_concat"
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
        ):
            return None
        assert not isinstance(self.in_index, int)
        selected = tuple(features[i] for i in self.in_index)
        if selected[0].device.type != "cpu":
            return None
        return ResizedLevels(selected, tuple(selected[0].shape[-2:]), self.align_corners)

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Dropout + 1x1 classifier: (B, channels, h, w) -> (B, out_channels, h, w) logits."""
        return self.conv_seg(self.dropout(feat))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the resolution of the level the head reads."""
        raise NotImplementedError

    # --- outputs -------------------------------------------------------------------------------
    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) logits -> (B, H, W) int64 labels: argmax, or sigmoid > threshold in binary mode."""
        if self.binary:
            return (logits[:, 0].sigmoid() > self.threshold).long()
        # Same indices as argmax (the first of tied maxima), but torch's CPU argmax over the channel
        # dim of an NCHW map is ~4x slower than max's: 0.27 s vs 0.06 s for the accuracy of one
        # 2x19x512x512 training batch on 2 cores.
        return logits.max(dim=1).indices

    def loss(self, logits: torch.Tensor, seg_label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses (under each ``loss_name``) and ``acc_seg`` (a fraction of non-ignored pixels).

        Args:
            logits: (B, C, h, w) head output; resized bilinearly to the label size first.
            seg_label: (B, H, W) int64 labels, ``ignore_index`` where unlabelled or padded.
        """
        logits = resize_bilinear(logits, seg_label.shape[-2:], self.align_corners)
        weight = None if self.sampler is None else self.sampler(logits, seg_label)
        losses: dict[str, torch.Tensor] = {}
        for loss_fn in self.loss_decode:
            value = loss_fn(logits, seg_label, weight=weight, ignore_index=self.ignore_index)
            name = loss_fn.loss_name
            # Two losses sharing a name are summed, as in MMSeg.
            losses[name] = losses[name] + value if name in losses else value
        losses["acc_seg"] = self.accuracy(logits.detach(), seg_label)
        return losses

    def accuracy(self, logits: torch.Tensor, seg_label: torch.Tensor) -> torch.Tensor:
        """Fraction of non-ignored pixels predicted right (0 when every pixel is ignored)."""
        valid = seg_label != self.ignore_index
        correct = (self.predict_labels(logits) == seg_label) & valid
        return correct.sum().float() / valid.sum().clamp(min=1).float()
