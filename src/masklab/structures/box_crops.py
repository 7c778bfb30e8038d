"""Box-conditioned crops for mask auto-labeling (MAL): one record per box, and their batch.

MAL does not see whole images: every sample is one annotation's box cropped with some context and
resized to a square. These types carry the crop, the box inside it, and the window that maps the
crop back onto the source image (for paste-back at labeling time).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class CropWindow:
    """Where a square crop came from in its source image.

    The crop covers image columns ``x0 .. x0 + width`` and rows ``y0 .. y0 + height`` (integers,
    exclusive end, possibly reaching outside the image: those parts were reflect-padded), resized
    to ``crop_size`` x ``crop_size``. Crop pixel coordinate ``u`` maps to image ``x0 + u / scale_x``.

    Attributes:
        x0: left image column of the window (may be negative).
        y0: top image row of the window (may be negative).
        width: window width in image pixels (>= 1).
        height: window height in image pixels (>= 1).
        crop_size: side of the square crop in pixels.
        image_size: (H, W) of the source image.
        flipped: True when the crop was mirrored horizontally after cropping.
    """

    x0: int
    y0: int
    width: int
    height: int
    crop_size: int
    image_size: tuple[int, int]
    flipped: bool = False

    def __post_init__(self) -> None:
        assert self.width >= 1 and self.height >= 1 and self.crop_size >= 1, f"degenerate window {self}"

    @property
    def scale_x(self) -> float:
        """Crop pixels per image pixel along x."""
        return self.crop_size / self.width

    @property
    def scale_y(self) -> float:
        """Crop pixels per image pixel along y."""
        return self.crop_size / self.height

    def image_box_to_crop(self, box: torch.Tensor) -> torch.Tensor:
        """Map (..., 4) image ``x1, y1, x2, y2`` boxes to crop coordinates (honouring ``flipped``)."""
        x1 = (box[..., 0] - self.x0) * self.scale_x
        x2 = (box[..., 2] - self.x0) * self.scale_x
        y1 = (box[..., 1] - self.y0) * self.scale_y
        y2 = (box[..., 3] - self.y0) * self.scale_y
        if self.flipped:
            x1, x2 = self.crop_size - x2, self.crop_size - x1
        return torch.stack([x1, y1, x2, y2], dim=-1)


@dataclass
class BoxCrop:
    """One box of one image, cropped for MAL.

    Attributes:
        image: (3, S, S) uint8 RGB crop, the clean (teacher / labeling) view.
        student_image: (3, S, S) uint8 photometrically augmented view with the same geometry
            (training only; None at labeling time, where the student sees ``image``).
        box: (4,) float ``x1, y1, x2, y2`` of the box in crop pixels (exclusive ends).
        box_mask: (S, S) bool, True on crop pixels whose centre lies inside ``box``. This filled
            rectangle is MAL's only training target; it is never a ground-truth mask.
        window: the crop -> image mapping.
        image_box: (4,) float the box in image pixels as given by the annotation (``x1, y1, x2, y2``).
        ann_id: source annotation id (becomes ``InstancePrediction.source_ids``).
        image_id: source image id.
        label: contiguous category index.
        category_id: source category id.
        file_name: image path.
        score: detector score when the boxes came from a detector, else None.
        gt_mask: (H, W) bool ground-truth mask of the whole image, loaded for evaluation only
            (``load_mask``); datasets never fill it in training mode.
        region: labeling only, when asked for (``region_pad``): (3, h, w) uint8 image pixels of
            the box grown by a margin and clipped to the image, read by the label refinement at
            image resolution; ``region_origin`` is its top-left ``(row, col)`` in the image.
    """

    image: torch.Tensor
    box: torch.Tensor
    box_mask: torch.Tensor
    window: CropWindow
    image_box: torch.Tensor
    ann_id: int
    image_id: int
    label: int
    category_id: int
    file_name: str = ""
    score: float | None = None
    student_image: torch.Tensor | None = None
    gt_mask: torch.Tensor | None = None
    region: torch.Tensor | None = None
    region_origin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        s = self.window.crop_size
        assert tuple(self.image.shape) == (3, s, s), f"crop image {tuple(self.image.shape)} vs crop size {s}"
        assert tuple(self.box_mask.shape) == (s, s) and self.box.shape == (4,)
        if self.student_image is not None:
            assert self.student_image.shape == self.image.shape


@dataclass
class MalBatch:
    """B box crops collated for a MAL model (see ``data.datasets.box_crops.collate_box_crops``).

    Attributes:
        images: (B, 3, S, S) student view (uint8 from collate; float normalised after the
            model's data preprocessor).
        teacher_images: (B, 3, S, S) clean view fed to the EMA teacher (and used for the CRF colour
            affinities); equals ``images`` when no augmentation was applied.
        boxes: (B, 4) float boxes in crop pixels.
        box_masks: (B, S, S) bool filled boxes: the only supervision MAL trains on.
        crops: the per-box provenance (window, image box, ids, label, score, and the evaluation-only
            ``gt_mask``, which the training loss never reads: tested).
    """

    images: torch.Tensor
    teacher_images: torch.Tensor
    boxes: torch.Tensor
    box_masks: torch.Tensor
    crops: list[BoxCrop] = field(default_factory=list)

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        assert self.images.ndim == 4 and self.teacher_images.shape == self.images.shape
        assert self.boxes.shape == (b, 4) and self.box_masks.shape == (b, *self.images.shape[-2:])
        assert len(self.crops) == b, f"{len(self.crops)} crops for {b} images"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def gt_masks(self) -> list[torch.Tensor | None]:
        """Evaluation-only ground-truth masks, one (H, W) bool tensor or None per crop."""
        return [crop.gt_mask for crop in self.crops]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MalBatch:
        """Move the batched tensors (not the per-crop records) to ``device``."""
        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            teacher_images=self.teacher_images.to(device, non_blocking=non_blocking),
            boxes=self.boxes.to(device, non_blocking=non_blocking),
            box_masks=self.box_masks.to(device, non_blocking=non_blocking),
        )


def rasterize_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Filled (B, height, width) bool masks of (B, 4) ``x1, y1, x2, y2`` boxes in that grid's pixels.

    A pixel is inside when its centre is (``x1 <= u + 0.5 < x2``). A box thinner than a pixel
    still gets the row/column holding its centre, so every box covers at least one pixel (MIL
    needs a positive bag on each axis).
    """
    device = boxes.device
    cols = torch.arange(width, device=device, dtype=boxes.dtype) + 0.5
    rows = torch.arange(height, device=device, dtype=boxes.dtype) + 0.5
    in_x = (cols[None] >= boxes[:, 0:1]) & (cols[None] < boxes[:, 2:3])
    in_y = (rows[None] >= boxes[:, 1:2]) & (rows[None] < boxes[:, 3:4])
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2).floor().long().clamp(0, width - 1)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2).floor().long().clamp(0, height - 1)
    in_x |= ~in_x.any(dim=1, keepdim=True) & (torch.arange(width, device=device)[None] == cx[:, None])
    in_y |= ~in_y.any(dim=1, keepdim=True) & (torch.arange(height, device=device)[None] == cy[:, None])
    return in_y[:, :, None] & in_x[:, None, :]
