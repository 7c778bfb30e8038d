"""MAL box-crop dataset: crop geometry, reflect padding, filtering and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.data.datasets.box_crops import (
    BoxCropDataset,
    collate_box_crops,
    crop_image,
    crop_window,
    labeling_margins,
    reflect_indices,
    sample_train_margins,
)
from masklab.errors import DataError
from masklab.structures.box_crops import CropWindow

H, W = 48, 64


def _write(
    tmp_path: Path, anns: list[dict], images: list[dict] | None = None, write_files: bool = True
) -> Path:
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    if write_files:
        rng = np.random.default_rng(0)
        for img in images:
            arr = rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / img["file_name"])
    path = tmp_path / "boxes.json"
    cats = [{"id": 3, "name": "thing"}, {"id": 7, "name": "other"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _ann(i: int, bbox: list[float], **extra: object) -> dict:
    return {"id": i, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0, **extra}


def test_reflect_indices_mirror_without_repeating_the_edge() -> None:
    assert reflect_indices(-3, 8, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4]
    assert reflect_indices(3, 5, 5).tolist() == [3, 4, 3, 2, 1]
    assert reflect_indices(-2, 12, 3).max().item() <= 2  # windows wider than the image still work


def test_crop_outside_the_image_is_reflected_not_constant() -> None:
    image = (
        torch.arange(H * W, dtype=torch.int64)
        .remainder(251)
        .to(torch.uint8)
        .view(1, H, W)
        .expand(3, H, W)
        .contiguous()
    )
    window = CropWindow(x0=-4, y0=-3, width=16, height=16, crop_size=16, image_size=(H, W))
    crop = crop_image(image, window)
    # Crop pixel (row r, col c) shows image pixel (r - 3, c - 4) mirrored at the borders.
    assert crop[:, 3, 4].equal(image[:, 0, 0])
    assert crop[:, 3, 3].equal(image[:, 0, 1])  # x = -1 -> x = 1
    assert crop[:, 2, 4].equal(image[:, 1, 0])  # y = -1 -> y = 1
    assert crop[:, 0, 0].equal(image[:, 3, 4])
    assert len({tuple(crop[:, r, 0].tolist()) for r in range(16)}) > 1  # no constant fill column


def test_training_margins_split_context_between_opposite_sides() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = sample_train_margins((0.0, 1.2), gen)
        assert 0 <= left + right <= 1.2 + 1e-6 and 0 <= top + bottom <= 1.2 + 1e-6
    assert labeling_margins((0.6, 0.6)) == (0.3, 0.3, 0.3, 0.3)
    window = crop_window(torch.tensor([10.0, 10.0, 30.0, 20.0]), labeling_margins((0.6, 0.6)), (H, W), 32)
    assert (window.x0, window.y0, window.width, window.height) == (7, 8, 26, 14)  # grown 1.3x


def test_training_skips_are_counted_and_gt_masks_are_never_loaded(tmp_path: Path) -> None:
    square = [[10, 10, 40, 10, 40, 40, 10, 40]]
    anns = [
        _ann(1, [10, 10, 30, 30], segmentation=square),  # kept
        _ann(2, [5, 5, 0, 10]),  # empty
        _ann(3, [200, 200, 10, 10]),  # outside
        _ann(4, [1, 1, 5, 5]),  # too small for min_obj_size
        _ann(5, [0, 0, 30, 30], iscrowd=1),  # crowd
    ]
    path = _write(tmp_path, anns)
    ds = BoxCropDataset(
        str(path), str(tmp_path), training=True, crop_size=32, min_obj_size=100, load_mask=True
    )
    assert len(ds) == 1
    assert ds.skipped == {
        "crowd": 1,
        "empty": 1,
        "malformed": 0,
        "outside_image": 1,
        "too_small": 1,
        "too_large": 0,
    }
    crop = ds[0]
    assert crop.gt_mask is None  # load_mask is ignored while training
    assert crop.student_image is not None and crop.student_image.shape == crop.image.shape
    batch = collate_box_crops([crop, ds[0]])
    assert all(m is None for m in batch.gt_masks)
    assert batch.images.dtype == torch.uint8 and batch.box_masks.shape == (2, 32, 32)


def test_labeling_keeps_every_box_loads_gt_and_carries_scores(tmp_path: Path) -> None:
    square = [[10, 10, 40, 10, 40, 40, 10, 40]]
    anns = [
        _ann(1, [10, 10, 30, 30], segmentation=square, score=0.7),
        _ann(2, [1, 1, 3, 3]),
        _ann(3, [50, 30, 30, 30]),
    ]
    ds = BoxCropDataset(
        str(_write(tmp_path, anns)), str(tmp_path), training=False, crop_size=32, load_mask=True
    )
    assert len(ds) == 3
    first = ds[0]
    assert first.score == 0.7 and first.student_image is None and first.gt_mask is not None
    assert first.gt_mask.sum().item() == 900 and first.gt_mask.shape == (H, W)
    last = ds[2]  # partly outside: clipped to the image
    assert last.image_box.tolist() == [50.0, 30.0, 64.0, 48.0]
    assert ds[1].box_mask.any()
    again = ds[0]
    assert again.image.equal(first.image) and again.window == first.window  # deterministic


@pytest.mark.parametrize(
    ("anns", "match"),
    [
        ([_ann(1, [200, 200, 10, 10])], "lies outside"),
        ([_ann(1, [5, 5, 0, 10])], "expected positive width and height"),
        ([_ann(1, [5, 5, 10, 10], score="high")], "field 'score'"),
        (
            [{**_ann(1, [5, 5, 10, 10]), "category_id": 99}],
            "'category_id' is 99, which is not among the categories",
        ),
        ([{**_ann(1, [5, 5, 10, 10]), "image_id": 5}], "'image_id' is 5, which is not among the images"),
    ],
)
def test_labeling_bad_boxes_are_one_line_errors(tmp_path: Path, anns: list[dict], match: str) -> None:
    # The annotation file is read by masklab.data.coco.load_coco: its one-line errors name the box.
    with pytest.raises(DataError, match=match) as info:
        BoxCropDataset(str(_write(tmp_path, anns)), str(tmp_path), training=False, crop_size=16)
    assert "\n" not in str(info.value) and "annotation id=1" in str(info.value)


def test_training_refuses_boxes_of_unknown_images_or_categories(tmp_path: Path) -> None:
    anns = [_ann(1, [5, 5, 20, 20]), {**_ann(2, [5, 5, 20, 20]), "category_id": 99}]
    with pytest.raises(DataError, match="0 annotations have an image_id and 1 a category_id") as info:
        BoxCropDataset(str(_write(tmp_path, anns)), str(tmp_path), training=True, crop_size=16)
    assert "\n" not in str(info.value)


def test_decoded_images_are_cached_and_crops_do_not_change(tmp_path: Path) -> None:
    path = _write(tmp_path, [_ann(1, [5, 5, 20, 20]), _ann(2, [30, 10, 20, 20])])
    cached = BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=16)
    plain = BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=16, image_cache_size=0)
    assert cached.read_image(1) is cached.read_image(1) and len(plain._image_cache) == 0
    for i in range(2):
        assert cached[i].image.equal(plain[i].image)


def test_missing_image_is_reported_at_construction(tmp_path: Path) -> None:
    path = _write(tmp_path, [_ann(1, [5, 5, 20, 20])], write_files=False)
    with pytest.raises(
        DataError,
        match=r"boxes\.json: images\[id=1\]\.file_name 'a\.png': no such file under .*\(1 of 1 images",
    ):
        BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=16)


def test_bad_margin_rate_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, [_ann(1, [5, 5, 20, 20])])
    with pytest.raises(DataError, match="margin_rate"):
        BoxCropDataset(str(path), str(tmp_path), margin_rate=(1.2, 0.0))
