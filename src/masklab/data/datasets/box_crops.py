"""MAL box crops: one sample per annotation box, cropped with context from a COCO file.

Training crops draw random extra context split between opposite sides (``margin_rate``), labeling
crops grow the box by a fixed factor (``test_margin_rate`` [0.6, 0.6] = 1.3x). Parts of the window
outside the image are reflect-padded: a constant fill would create fake colour edges that the CRF
affinities then follow. Ground-truth masks are read only in labeling/evaluation mode.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from masklab.config.registries import DATASETS
from masklab.data.coco.images import check_image_files, read_coco_image
from masklab.data.coco.load import load_coco
from masklab.data.coco.records import CocoAnnotation
from masklab.errors import DataError
from masklab.structures.box_crops import BoxCrop, CropWindow, MalBatch, rasterize_boxes


def _decode_segmentation(segm: object, height: int, width: int) -> torch.Tensor | None:
    """(H, W) bool mask of a COCO polygon / RLE segmentation, or None when absent."""
    from pycocotools import mask as mask_utils

    from masklab.data.coco.rle import segmentation_to_rle

    if not segm:
        return None
    rle = segmentation_to_rle(segm, height, width)  # type: ignore[arg-type]
    return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rle))).bool()


# --------------------------------------------------------------------------------------------------
# Crop geometry (pure functions, usable without files)
# --------------------------------------------------------------------------------------------------
def sample_train_margins(
    margin_rate: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[float, float, float, float]:
    """Random (left, top, right, bottom) margins relative to the box half-size.

    Four margins are drawn from U(margin_rate); a gate g ~ U(0, 1) per axis gives the near side
    ``g`` and the far side ``1 - g`` of its margin, so the context is split randomly between
    opposite sides (with [0, 1.2] some crops have no context on one side: the box then touches
    the crop edge, and other crops give MIL its negative rows and columns).
    """
    lo, hi = margin_rate
    m = torch.rand(4, generator=generator) * (hi - lo) + lo
    gx, gy = torch.rand(2, generator=generator).tolist()
    return float(m[0]) * gx, float(m[1]) * gy, float(m[2]) * (1 - gx), float(m[3]) * (1 - gy)


def labeling_margins(test_margin_rate: tuple[float, float]) -> tuple[float, float, float, float]:
    """Deterministic labeling margins: the range's mean on every side with the gate at 0.5.

    The default [0.6, 0.6] gives 0.3 of the half-size per side, i.e. the box grown 1.3x.
    """
    m = 0.5 * (test_margin_rate[0] + test_margin_rate[1]) * 0.5
    return m, m, m, m


def box_pixel_spans(lo: torch.Tensor, hi: torch.Tensor, size: torch.Tensor, grow: int = 0) -> torch.Tensor:
    """(K, 2) ``(first, count)`` of the pixels of one image axis inside ``[lo, hi)`` by their centre
    (as :func:`~masklab.structures.box_crops.rasterize_boxes`: a box thinner than a pixel keeps the
    pixel holding its centre), grown by ``grow`` pixels on both sides and clipped to axes of
    ``size`` pixels each."""
    lo, hi, size = lo.double(), hi.double(), size.double()
    # centre i + 0.5 >= lo  <=>  i >= ceil(lo - 0.5);  i + 0.5 < hi  <=>  i < ceil(hi - 0.5).
    first = torch.maximum(torch.ceil(lo - 0.5), torch.zeros_like(lo))
    end = torch.minimum(torch.ceil(hi - 0.5), size)
    empty = end <= first  # thinner than a pixel: the pixel holding the centre
    mid = torch.minimum(torch.floor((lo + hi) / 2).clamp(min=0), size - 1)
    first = torch.where(empty, mid, first)
    end = torch.where(empty, mid + 1, end)
    if grow:
        first = (first - grow).clamp(min=0)
        end = torch.minimum(end + grow, size)
    return torch.stack([first, end - first], 1).long()


def box_regions(
    image: torch.Tensor, boxes: torch.Tensor, grow: int
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The image pixels (C, h, w) of each of K ``boxes``' pixel spans grown by ``grow`` (clipped to
    the image), and each region's top-left ``(row, col)``: what the label refinement at image
    resolution reads."""
    height, width = image.shape[-2:]
    boxes = boxes.reshape(-1, 4)
    k = boxes.shape[0]
    rows = box_pixel_spans(boxes[:, 1], boxes[:, 3], torch.full((k,), height), grow).tolist()
    cols = box_pixel_spans(boxes[:, 0], boxes[:, 2], torch.full((k,), width), grow).tolist()
    regions = [image[:, r0 : r0 + nr, c0 : c0 + nc] for (r0, nr), (c0, nc) in zip(rows, cols, strict=True)]
    return regions, [(r[0], c[0]) for r, c in zip(rows, cols, strict=True)]


def crop_window(
    box: torch.Tensor, margins: tuple[float, float, float, float], image_size: tuple[int, int], crop_size: int
) -> CropWindow:
    """Integer window around ``box`` (image ``x1, y1, x2, y2``) pushed out by ``margins`` from its centre."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ml, mt, mr, mb = margins
    left = math.floor(cx - (cx - x1) * (1 + ml))
    top = math.floor(cy - (cy - y1) * (1 + mt))
    right = max(math.ceil(cx + (x2 - cx) * (1 + mr)), left + 1)
    bottom = max(math.ceil(cy + (y2 - cy) * (1 + mb)), top + 1)
    return CropWindow(left, top, right - left, bottom - top, crop_size, image_size)


def reflect_indices(start: int, length: int, size: int) -> torch.Tensor:
    """Indices ``start .. start+length`` folded into ``[0, size)`` by mirror reflection (edge pixel not repeated).

    Works for windows wider than the image, unlike ``F.pad(mode='reflect')``.
    """
    idx = torch.arange(start, start + length)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def crop_image(image: torch.Tensor, window: CropWindow) -> torch.Tensor:
    """(3, S, S) uint8 crop of a (3, H, W) uint8 image over ``window``, reflect-padded and resized."""
    h, w = image.shape[-2:]
    rows = reflect_indices(window.y0, window.height, h)
    cols = reflect_indices(window.x0, window.width, w)
    region = image.index_select(1, rows).index_select(2, cols).float()
    s = window.crop_size
    # Antialiasing keeps large boxes from aliasing into false texture at crop resolution.
    out = F.interpolate(region[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0]
    out = out.round().clamp(0, 255).to(torch.uint8)
    return out.flip(-1) if window.flipped else out


def make_box_crop(
    image: torch.Tensor,
    image_box: torch.Tensor,
    margins: tuple[float, float, float, float],
    crop_size: int,
    *,
    flip: bool = False,
    ann_id: int = -1,
    image_id: int = 0,
    label: int = 0,
    category_id: int = 0,
    file_name: str = "",
    score: float | None = None,
    gt_mask: torch.Tensor | None = None,
) -> BoxCrop:
    """Crop one box (image ``x1, y1, x2, y2``, already inside the image) into a :class:`BoxCrop`."""
    h, w = image.shape[-2:]
    window = crop_window(image_box, margins, (int(h), int(w)), crop_size)
    if flip:
        window = CropWindow(
            window.x0, window.y0, window.width, window.height, crop_size, window.image_size, True
        )
    box = window.image_box_to_crop(image_box.float())
    return BoxCrop(
        image=crop_image(image, window),
        box=box,
        box_mask=rasterize_boxes(box[None], crop_size, crop_size)[0],
        window=window,
        image_box=image_box.float(),
        ann_id=ann_id,
        image_id=image_id,
        label=label,
        category_id=category_id,
        file_name=file_name,
        score=score,
        gt_mask=gt_mask,
    )


def student_augment(image: torch.Tensor) -> torch.Tensor:
    """MAL's student view: ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.5, grayscale p=0.2, blur sigma 0.1-2 p=0.5."""
    from torchvision.transforms import v2

    aug = v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.5),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=13, sigma=(0.1, 2.0))], p=0.5),
        ]
    )
    return aug(image)


def collate_box_crops(crops: list[BoxCrop]) -> MalBatch:
    """Stack crops into a :class:`MalBatch` (uint8 images; the model's preprocessor normalises)."""
    teacher = torch.stack([c.image for c in crops])
    student = torch.stack([c.image if c.student_image is None else c.student_image for c in crops])
    return MalBatch(
        images=student,
        teacher_images=teacher,
        boxes=torch.stack([c.box for c in crops]),
        box_masks=torch.stack([c.box_mask for c in crops]),
        crops=list(crops),
    )


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------
@DATASETS.register()
class BoxCropDataset(Dataset[BoxCrop]):
    """One :class:`BoxCrop` per box of a COCO file, for MAL training or labeling.

    Which boxes are kept:
        * training: crowd boxes, boxes with w or h <= 0 or non-finite or non-crowd masks without
          a pixel (``empty``), annotations
          load_coco finds malformed otherwise (bad segmentation or attributes, duplicate id:
          ``malformed``), boxes fully outside the image (``outside_image``), with w or h <= 2 or
          area <= ``min_obj_size`` (``too_small``) or area > ``max_obj_size`` (``too_large``) are
          skipped and counted in :attr:`skipped`.
        * labeling (``training=False``): every box is kept, because the output must carry one mask
          per input box; a malformed annotation (zero-size box, bad score, ...) or a box fully
          outside its image is a one-line :class:`DataError` naming the annotation id.
        In both modes an image_id or category_id missing from the file is a :class:`DataError`.
        Boxes partly outside the image are clipped to it in both modes.

    Args:
        ann_path: COCO JSON with images, boxes (``bbox`` x, y, w, h; optional ``score``) and
            categories, read by :func:`masklab.data.coco.load_coco`.
        img_dir: folder the images' ``file_name`` are relative to.
        training: random context, flip and a photometrically augmented student view when True.
        crop_size: side of the square crops.
        margin_rate: range of the random training margins (relative to the box half-size).
        test_margin_rate: labeling margins (the range's mean is used on every side).
        min_obj_size: training boxes need an area above this (image pixels squared).
        max_obj_size: training boxes need an area at most this.
        load_mask: decode ground-truth masks for evaluation; ignored in training mode, where no
            ground-truth mask may reach the loss.
        flip_prob: horizontal flip probability (training only).
        image_cache_size: decoded images kept in memory (LRU; 0 disables).
        region_pad: labeling only: each crop also carries the image pixels of its box grown by
            this many pixels (:attr:`BoxCrop.region`), for the label refinement at image
            resolution (``evaluate.crf_refine_space: image``); 0: none.
    """

    collate_fn = staticmethod(collate_box_crops)

    def __init__(
        self,
        ann_path: str,
        img_dir: str,
        *,
        training: bool = True,
        crop_size: int = 512,
        margin_rate: tuple[float, float] = (0.0, 1.2),
        test_margin_rate: tuple[float, float] = (0.6, 0.6),
        min_obj_size: float = 2048,
        max_obj_size: float = 1e10,
        load_mask: bool = False,
        flip_prob: float = 0.5,
        image_cache_size: int = 256,
        region_pad: int = 0,
    ) -> None:
        for key, rate in (("margin_rate", margin_rate), ("test_margin_rate", test_margin_rate)):
            if len(rate) != 2 or rate[0] > rate[1] or rate[0] < 0:
                raise DataError(
                    f"dataset.{key}: expected [low, high] with 0 <= low <= high, got {list(rate)}"
                )
        if crop_size < 8:
            raise DataError(f"dataset.crop_size: expected at least 8 pixels, got {crop_size}")
        self.ann_path = Path(ann_path)
        self.img_dir = Path(img_dir)
        self.training = training
        self.crop_size = int(crop_size)
        self.margin_rate = (float(margin_rate[0]), float(margin_rate[1]))
        self.test_margin_rate = (float(test_margin_rate[0]), float(test_margin_rate[1]))
        self.min_obj_size = float(min_obj_size)
        self.max_obj_size = float(max_obj_size)
        self.load_mask = bool(load_mask) and not training
        self.flip_prob = float(flip_prob)
        self.image_cache_size = int(image_cache_size)
        if region_pad < 0:
            raise DataError(f"region_pad: expected >= 0 pixels, got {region_pad}")
        self.region_pad = int(region_pad) if not training else 0

        # Labeling must keep every box, so any malformed annotation is a one-line error naming it;
        # training drops what it cannot use and counts it, but a box pointing at an image or
        # category missing from the file is still an error (the file, not the box, is wrong).
        coco = load_coco(self.ann_path, on_bad="skip" if training else "error")
        bad_refs = coco.skipped.dangling_image + coco.skipped.unknown_category
        if bad_refs:
            raise DataError(
                f"{self.ann_path}: {coco.skipped.dangling_image} annotations have an image_id and "
                f"{coco.skipped.unknown_category} a category_id that is not in the file"
            )
        self.images = coco.image_by_id()
        self.category_ids = coco.category_ids
        names = {c.id: c.name for c in coco.categories}
        self.classes = tuple(names[cid] for cid in coco.category_ids)
        self._label_of = {cid: i for i, cid in enumerate(coco.category_ids)}
        self.skipped: dict[str, int] = {
            "crowd": 0,
            # zero-size or non-finite boxes (load_coco's bad_box) and masks without a pixel
            "empty": coco.skipped.bad_box + coco.skipped.empty_mask,
            "malformed": coco.skipped.bad_segmentation
            + coco.skipped.bad_attribute
            + coco.skipped.duplicate_id,
            "outside_image": 0,
            "too_small": 0,
            "too_large": 0,
        }
        self.entries: list[tuple[CocoAnnotation, torch.Tensor]] = []
        for ann in coco.annotations:
            clipped = self._check(ann)
            if clipped is not None:
                self.entries.append((ann, clipped))
        self._check_images_exist()
        self._image_cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _check(self, ann: CocoAnnotation) -> torch.Tensor | None:
        """The box clipped to its image, or None when training skips it (counted)."""
        where = f"{self.ann_path}: annotation id={ann.id}"
        img = self.images[ann.image_id]
        x, y, w, h = ann.bbox  # load_coco guarantees w, h > 0
        if self.training and ann.iscrowd:
            self.skipped["crowd"] += 1
            return None
        box = torch.tensor([max(x, 0.0), max(y, 0.0), min(x + w, img.width), min(y + h, img.height)])
        if box[2] <= box[0] or box[3] <= box[1]:
            if self.training:
                self.skipped["outside_image"] += 1
                return None
            raise DataError(
                f"{where}: bbox {list(ann.bbox)} lies outside its {img.width}x{img.height} image {img.file_name}"
            )
        if self.training:
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            if bw <= 2 or bh <= 2 or bw * bh <= self.min_obj_size:
                self.skipped["too_small"] += 1
                return None
            if bw * bh > self.max_obj_size:
                self.skipped["too_large"] += 1
                return None
        return box

    def _check_images_exist(self) -> None:
        needed = sorted({ann.image_id for ann, _ in self.entries})
        check_image_files(self.img_dir, [self.images[i] for i in needed], self.ann_path)

    def read_image(self, image_id: int) -> torch.Tensor:
        """(3, H, W) uint8 image, decoded once and kept in a small LRU cache.

        Every box of an image is one sample, so the same file is read many times per epoch; the
        cache holds the last ``image_cache_size`` images (all of them for a small set).
        """
        cached = self._image_cache.get(image_id)
        if cached is not None:
            self._image_cache.move_to_end(image_id)
            return cached
        image = read_coco_image(self.img_dir, self.images[image_id], self.ann_path)
        if self.image_cache_size > 0:
            self._image_cache[image_id] = image
            if len(self._image_cache) > self.image_cache_size:
                self._image_cache.popitem(last=False)
        return image

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> BoxCrop:
        ann, box = self.entries[index]
        info = self.images[ann.image_id]
        path = self.img_dir / info.file_name
        image = self.read_image(ann.image_id)
        if self.training:
            margins = sample_train_margins(self.margin_rate)
            flip = bool(torch.rand(()) < self.flip_prob)
        else:
            margins = labeling_margins(self.test_margin_rate)
            flip = False
        gt_mask = _decode_segmentation(ann.segmentation, info.height, info.width) if self.load_mask else None
        crop = make_box_crop(
            image,
            box,
            margins,
            self.crop_size,
            flip=flip,
            ann_id=ann.id,
            image_id=ann.image_id,
            label=self._label_of[ann.category_id],
            category_id=ann.category_id,
            file_name=str(path),
            score=ann.score,
            gt_mask=gt_mask,
        )
        if self.training:
            crop.student_image = student_augment(crop.image)
        elif self.region_pad:
            regions, origins = box_regions(image, box, self.region_pad)
            crop.region, crop.region_origin = regions[0].clone(), origins[0]
        return crop
