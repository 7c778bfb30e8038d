"""Batched MAL labeling equals the per-box path (crops, paste-back, masks) and keeps every input box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.data.datasets.box_crops import BoxCropDataset, collate_box_crops, labeling_margins, make_box_crop
from masklab.inference.paste_back import paste_masks
from masklab.models.mal import MALModel, MalTinyEncoder
from masklab.models.mal.labeling import crop_boxes, label_dataset, paste_probs
from masklab.structures.box_crops import CropWindow

S = 32
# Boxes touching every border, one larger than the crop (antialiased downsampling), one thin.
BOXES = torch.tensor(
    [
        [0.0, 0.0, 12.0, 10.0],
        [20.0, 14.0, 56.0, 40.0],
        [3.5, 5.25, 50.0, 38.0],
        [40.0, 2.0, 42.0, 30.0],
        [10.0, 30.0, 30.0, 40.0],
    ]
)
H, W = 40, 56


def _image(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen)


def _model(**kw: object) -> MALModel:
    torch.manual_seed(0)
    return MALModel(
        MalTinyEncoder(8, 3), mask_head_hidden_channel=8, mask_head_out_channel=8, mask_thres=(0.5,), **kw
    )  # type: ignore[arg-type]


def test_batched_crops_equal_per_box_crops() -> None:
    image, margins = _image(), labeling_margins((0.6, 0.6))
    crops, windows = crop_boxes(image, BOXES, margins, S)
    for k, box in enumerate(BOXES):
        ref = make_box_crop(image, box, margins, S)
        assert windows[k] == ref.window
        diff = (crops[k] - ref.image.float()).abs()
        # Same filter weights, other summation order: at most a rounding tie flips by one level.
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_batched_paste_equals_per_box_paste() -> None:
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(len(BOXES), 8, 8, generator=gen)
    windows = [
        CropWindow(-3, -2, 20, 18, S, (H, W)),
        CropWindow(15, 10, 50, 40, S, (H, W)),
        CropWindow(0, 0, 6, 5, S, (H, W)),  # smaller than the probability map: downsampling
        CropWindow(38, -4, 7, 40, S, (H, W), flipped=True),
        CropWindow(5, 25, 30, 20, S, (H, W)),
    ]
    got = paste_probs(probs, windows, BOXES)
    _, ref = paste_masks(probs, windows, BOXES, (0.5,))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def _write(tmp_path: Path) -> Path:
    """Three images whose boxes are interleaved in the file; image 2 has more boxes than the batch."""
    images = []
    for i in range(3):
        Image.fromarray(_image(i).permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": H, "width": W})
    anns = []
    for j, box in enumerate(BOXES.tolist() * 2):
        x1, y1, x2, y2 = box
        image_id = 2 if j < 5 else 1 + (j % 3)
        anns.append(
            {"id": 100 + j, "image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        )
    path = tmp_path / "boxes.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    return path


def test_label_dataset_keeps_every_box_and_batch_size_does_not_matter(tmp_path: Path) -> None:
    path = _write(tmp_path)
    ds = BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=S)
    model = _model()
    by_batch = {b: label_dataset(model, ds, batch_size=b) for b in (1, 3, 64)}
    ids = [a["id"] for a in json.loads(path.read_text())["annotations"]]
    for masks in by_batch.values():
        assert sorted(masks) == sorted(ids)  # one mask per input box, none dropped or merged
        assert all(m.shape == (H, W) and m.dtype == bool for m in masks.values())
    for i in ids:
        assert np.array_equal(by_batch[1][i], by_batch[64][i])
        assert np.array_equal(by_batch[3][i], by_batch[64][i])


@pytest.mark.parametrize("refine_iter", [0, 2])
def test_label_dataset_equals_the_per_box_predict_path(tmp_path: Path, refine_iter: int) -> None:
    """Per box: dataset crop -> one-crop batch -> ``MALModel.predict``; batched: :func:`label_dataset`
    (with and without the labeling-time colour refinement)."""
    path = _write(tmp_path)
    ds = BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=S)
    model = _model()
    model.set_labeling(refine_iter=refine_iter)
    # An untrained model's probabilities sit in a narrow band: threshold at their median so the
    # masks are neither empty nor full boxes and a shifted paste would show.
    first = model.data_preprocessor(collate_box_crops([ds[0]]))
    with torch.no_grad():
        probs = model._label_probs(first.images, model._box_areas(first))
    model.mask_thres = (float(probs.median()),)
    batched = label_dataset(model, ds, batch_size=8)
    model.to(memory_format=torch.contiguous_format)
    nonempty = 0
    for i in range(len(ds)):
        batch = model.data_preprocessor(collate_box_crops([ds[i]]))
        (pred,) = model.predict(batch)
        ref = pred.masks[0].numpy()
        got = batched[int(pred.source_ids[0])]
        # Crops may differ by one grey level at rounding ties: allow a handful of border pixels.
        assert (ref != got).sum() <= 2
        nonempty += int(got.any())
    assert nonempty >= len(ds) // 2


def test_label_dataset_refuses_a_training_dataset(tmp_path: Path) -> None:
    ds = BoxCropDataset(str(_write(tmp_path)), str(tmp_path), training=True, crop_size=S, min_obj_size=1)
    with pytest.raises(ValueError, match="labeling-mode"):
        label_dataset(_model(), ds)


def test_box_axis_matches_rasterize_boxes_for_thin_and_fractional_boxes() -> None:
    from masklab.models.mal.labeling import _box_axis
    from masklab.structures.box_crops import rasterize_boxes

    boxes = torch.cat([BOXES, torch.tensor([[7.2, 3.1, 7.4, 3.3], [0.0, 39.6, 55.9, 40.0]])])
    ref = rasterize_boxes(boxes, H, W)
    got = (
        _box_axis(boxes[:, 1], boxes[:, 3], H)[:, :, None]
        & _box_axis(boxes[:, 0], boxes[:, 2], W)[:, None, :]
    )
    assert got.equal(ref)


def test_box_region_masks_equal_full_image_paste() -> None:
    """``label_masks`` (paste over each box only) == ``paste_thresholded`` (whole-image tensors)."""
    from masklab.models.mal.labeling import label_masks, paste_thresholded

    gen = torch.Generator().manual_seed(2)
    probs = torch.rand(len(BOXES), 8, 8, generator=gen)
    boxes = torch.cat([BOXES[:4], torch.tensor([[7.2, 3.1, 7.4, 3.3]])])  # + a sub-pixel box
    windows = [
        CropWindow(-3, -2, 20, 18, S, (H, W)),
        CropWindow(15, 10, 50, 40, S, (H, W)),
        CropWindow(0, 0, 6, 5, S, (H, W)),
        CropWindow(38, -4, 7, 40, S, (H, W), flipped=True),
        CropWindow(5, 1, 6, 6, S, (H, W)),
    ]
    for thres in ((0.5,), (0.3, 0.5, 0.7), (0.0,)):
        ref, _ = paste_thresholded(probs, windows, boxes, thres)
        got = label_masks(probs, windows, boxes, thres)
        assert len(got) == len(boxes)
        for k in range(len(boxes)):
            assert got[k].shape == (H, W) and got[k].dtype == bool
            assert np.array_equal(got[k], ref[k].numpy())
        assert any(m.any() for m in got)


def test_box_spans_match_box_axis() -> None:
    from masklab.models.mal.labeling import _box_axis, _box_spans

    boxes = torch.cat(
        [BOXES, torch.tensor([[7.2, 3.1, 7.4, 3.3], [0.0, 39.6, 55.9, 40.0], [0.4, 0.5, 0.6, 1.5]])]
    )
    for lo, hi, size in ((boxes[:, 1], boxes[:, 3], H), (boxes[:, 0], boxes[:, 2], W)):
        axis = _box_axis(lo, hi, size)
        spans = _box_spans(lo, hi, torch.full((len(boxes),), size))
        for k, (first, count) in enumerate(spans.tolist()):
            ref = torch.zeros(size, dtype=torch.bool)
            ref[first : first + count] = True
            assert ref.equal(axis[k])


def test_box_region_masks_across_images_of_different_sizes() -> None:
    """One ``label_masks`` call over crops of two images == ``paste_thresholded`` per image."""
    from masklab.models.mal.labeling import label_masks, paste_thresholded

    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 8, 8, generator=gen)
    boxes = torch.tensor([[20.0, 14.0, 56.0, 40.0], [2.0, 3.0, 9.0, 20.0], [1.0, 1.0, 5.0, 4.0]])
    windows = [
        CropWindow(15, 10, 50, 40, S, (H, W)),
        CropWindow(-1, 0, 12, 24, S, (24, 12)),
        CropWindow(0, -1, 6, 6, S, (24, 12)),
    ]
    got = label_masks(probs, windows, boxes, (0.5,))
    ref_a, _ = paste_thresholded(probs[:1], windows[:1], boxes[:1], (0.5,))
    ref_b, _ = paste_thresholded(probs[1:], windows[1:], boxes[1:], (0.5,))
    for g, r in zip(got, [*ref_a, *ref_b], strict=True):
        assert np.array_equal(g, r.numpy())
