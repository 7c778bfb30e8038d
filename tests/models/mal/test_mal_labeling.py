"""Batched MAL labeling equals the per-box path (crops, paste-back, masks) and keeps every input box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.data.datasets.box_crops import (
    BoxCropDataset,
    box_regions,
    collate_box_crops,
    labeling_margins,
    make_box_crop,
)
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
        # Same filter weights, other summation order: at most a rounding tie flips by one level
        # (bilinear weights are multiples of 1/4 at 2x, so exact .5 values are common).
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-2


def test_crop_boxes_of_an_image_without_boxes_is_empty() -> None:
    crops, windows = crop_boxes(_image(), torch.zeros((0, 4)), labeling_margins((0.6, 0.6)), S)
    assert crops.shape == (0, 3, S, S) and windows == []


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


@pytest.mark.parametrize(("refine_iter", "space"), [(0, "crop"), (2, "crop"), (2, "image")])
def test_label_dataset_equals_the_per_box_predict_path(tmp_path: Path, refine_iter: int, space: str) -> None:
    """Per box: dataset crop -> one-crop batch -> ``MALModel.predict``; batched: :func:`label_dataset`
    (with and without the labeling-time colour refinement, on the crop or at image resolution:
    there the per-box path reads the crop's own region, the batched one a shared canvas)."""
    path = _write(tmp_path)
    model = _model()
    model.set_labeling(
        refine_iter=refine_iter, refine_space=space, refine_dilation=2 if space == "image" else 1
    )
    pad = model.image_refinement.pad if model.image_refinement else 0
    ds = BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=S, region_pad=pad)
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
    from masklab.data.datasets.box_crops import box_pixel_spans as _box_spans
    from masklab.models.mal.labeling import _box_axis

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


def test_dataset_regions_are_the_image_pixels_around_the_box(tmp_path: Path) -> None:
    path = _write(tmp_path)
    ds = BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=S, region_pad=3)
    image = _image(1)  # image id 2 = 1.png
    for i in range(5):  # the first five annotations are BOXES on image id 2
        crop = ds[i]
        assert crop.region is not None
        x1, y1, x2, y2 = BOXES[i].tolist()
        r0, c0 = crop.region_origin
        # The box's pixel span (by centre) grown by 3, clipped at the borders.
        assert r0 == max(0, int(np.ceil(y1 - 0.5)) - 3) and c0 == max(0, int(np.ceil(x1 - 0.5)) - 3)
        r1, c1 = min(H, int(np.ceil(y2 - 0.5)) + 3), min(W, int(np.ceil(x2 - 0.5)) + 3)
        assert torch.equal(crop.region, image[:, r0:r1, c0:c1])
    assert BoxCropDataset(str(path), str(tmp_path), training=False, crop_size=S)[0].region is None
    # Training crops never carry one (training reads crops only).
    train = BoxCropDataset(str(path), str(tmp_path), training=True, crop_size=S, region_pad=3, min_obj_size=1)
    assert train[0].region is None


def _edge_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 40x56 image: noise background, a flat 24x30 rectangle object at rows 8-31, cols 12-41,
    its box, and a crop-probability map that knows the object only blurred (a soft blob)."""
    gen = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen) // 4  # dark noise
    image[:, 8:32, 12:42] = torch.tensor([230, 40, 40], dtype=torch.uint8)[:, None, None]
    box = torch.tensor([[12.0, 8.0, 42.0, 32.0]])
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    probs = torch.sigmoid(4 * (0.55 - (yy.abs() ** 3 + xx.abs() ** 3)))[None]  # rounded, soft corners
    return image, box, probs


def test_image_refinement_snaps_labels_to_the_images_own_edges() -> None:
    """A blurred, corner-rounding prediction of a flat rectangle becomes the rectangle exactly once
    refined at image resolution; without it the corners are lost."""
    from masklab.models.mal.crf import RegionRefinement
    from masklab.models.mal.labeling import label_masks

    image, box, probs = _edge_scene()
    window = crop_boxes(image, box, labeling_margins((0.6, 0.6)), 16)[1]
    truth = np.zeros((H, W), dtype=bool)
    truth[8:32, 12:42] = True
    (plain,) = label_masks(probs, window, box, (0.5,))
    refinement = RegionRefinement(num_iter=3, kernel_size=5, zeta=0.5, low=0.1, high=0.9, dilation=3)
    (refined,) = label_masks(
        probs, window, box, (0.5,), refinement=refinement, pixels=box_regions(image, box, refinement.pad)[0]
    )
    assert (plain != truth).sum() > 20  # the soft blob misses the corners
    assert np.array_equal(refined, truth)


def test_image_refinement_never_labels_outside_the_box() -> None:
    """The object's colour continues past the box (another object of the same colour): the margin is
    background and the label stays inside the box. The pixels next to that box edge take the
    margin's vote (a box cutting through an object loses a few columns there: documented), the
    rest of the object is kept."""
    from masklab.models.mal.crf import RegionRefinement
    from masklab.models.mal.labeling import label_masks

    image, box, probs = _edge_scene()
    image[:, 8:32, 42:50] = image[:, 8:9, 12:13]  # same red right of the box
    window = crop_boxes(image, box, labeling_margins((0.6, 0.6)), 16)[1]
    refinement = RegionRefinement(num_iter=5, kernel_size=5, zeta=0.5, low=0.1, high=0.9, dilation=3)
    (mask,) = label_masks(
        probs, window, box, (0.5,), refinement=refinement, pixels=box_regions(image, box, refinement.pad)[0]
    )
    outside = np.ones((H, W), dtype=bool)
    outside[8:32, 12:42] = False
    assert not mask[outside].any()
    assert mask[8:32, 12:36].all() and mask[8:32, 12:42].mean() > 0.85


@pytest.mark.parametrize(
    ("dilation", "group_pixels"), [(1, 1 << 21), (2, 1 << 21), (3, 1 << 21), (3, 1500), (2, 1)]
)
def test_compiled_refinement_equals_refining_each_region_alone(
    monkeypatch: pytest.MonkeyPatch, dilation: int, group_pixels: int
) -> None:
    """The compiled per-region loops give each region what the PyTorch reference
    (:func:`refine_box_regions` on that region alone) gives: regions of very different sizes,
    touching the image border (clipped margins), the same box twice; in one group or split into
    several by the pixel budget (1: one region per group)."""
    from masklab.models.mal import region_kernels
    from masklab.models.mal.crf import RegionRefinement, refine_box_regions
    from masklab.models.mal.labeling import paste_box_regions, refine_regions

    monkeypatch.setattr(region_kernels, "GROUP_PIXELS", group_pixels)

    gen = torch.Generator().manual_seed(4)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen)
    boxes = torch.cat([BOXES, BOXES[:1]])
    probs = torch.rand(len(boxes), 8, 8, generator=gen)
    windows = crop_boxes(image, boxes, labeling_margins((0.6, 0.6)), 8)[1]
    refinement = RegionRefinement(num_iter=4, kernel_size=5, zeta=2.0, low=0.1, high=0.9, dilation=dilation)
    regions = paste_box_regions(probs, windows, boxes, refinement.pad)
    pixels = box_regions(image, boxes, refinement.pad)[0]
    together = refine_regions(regions, pixels, refinement)
    mean = torch.tensor(refinement.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(refinement.pixel_std).view(1, 3, 1, 1)
    clipped = 0
    for k, (region, (_, h), (_, w)) in enumerate(zip(pixels, regions.rows.tolist(), regions.cols.tolist())):
        alone = refine_box_regions(
            regions.probs[k : k + 1, :h, :w],
            (region[None].float() - mean) / std,
            regions.inside[k : k + 1, :h, :w],
            torch.ones(1, h, w, dtype=torch.bool),
            kernel_size=5,
            zeta=2.0,
            num_iter=4,
            dilation=dilation,
        )[0]
        torch.testing.assert_close(together[k, :h, :w], alone, atol=1e-5, rtol=1e-5)
        assert (together[k, h:] == 0).all() and (together[k, :, w:] == 0).all()
        clipped += int(tuple(regions.boxes[k, :2].tolist()) != (refinement.pad, refinement.pad))
    assert clipped > 0  # some margin was cut by the image border


def test_refinement_reads_regions_from_whole_images_as_from_cut_regions() -> None:
    """Refining from the whole images (:class:`ImagePixels`, no copies: the labeling path) equals
    refining from each region's own pixels (the evaluation path), for boxes of two images of
    different sizes; a region reaching past its source is refused."""
    from masklab.models.mal.crf import RegionRefinement
    from masklab.models.mal.labeling import ImagePixels, paste_box_regions, refine_regions
    from masklab.models.mal.region_kernels import refine_regions_compiled

    gen = torch.Generator().manual_seed(6)
    first = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen)
    second = torch.randint(0, 256, (3, 30, 33), dtype=torch.uint8, generator=gen)
    other = torch.tensor([[2.0, 3.0, 20.0, 25.0], [10.0, 0.0, 33.0, 30.0]])
    refinement = RegionRefinement(num_iter=3, kernel_size=5, zeta=1.0, low=0.1, high=0.9, dilation=2)
    margins = labeling_margins((0.6, 0.6))
    windows = crop_boxes(first, BOXES, margins, 8)[1] + crop_boxes(second, other, margins, 8)[1]
    boxes = torch.cat([BOXES, other])
    regions = paste_box_regions(torch.rand(len(boxes), 8, 8, generator=gen), windows, boxes, refinement.pad)
    cut = box_regions(first, BOXES, refinement.pad)[0] + box_regions(second, other, refinement.pad)[0]
    from_images = refine_regions(
        regions, ImagePixels([first, second], [0] * len(BOXES) + [1] * len(other)), refinement
    )
    torch.testing.assert_close(from_images, refine_regions(regions, cut, refinement), atol=0, rtol=0)
    sizes = [(int(r[1]), int(c[1])) for r, c in zip(regions.rows.tolist(), regions.cols.tolist())]
    with pytest.raises(ValueError, match="reaches outside its pixel source"):
        refine_regions_compiled(
            regions.probs[:1],
            sizes[:1],
            regions.boxes[:1].tolist(),
            [second[:, :5, :5]],
            [0],
            [(0, 0)],
            refinement,
        )
    with pytest.raises(ValueError, match=r"need 3 channels, got \[1\]"):
        refine_regions_compiled(
            regions.probs[:1], sizes[:1], regions.boxes[:1].tolist(), [first[:1]], [0], [(0, 0)], refinement
        )
    with pytest.raises(ValueError, match=r"source indices must be in \[0, 1\)"):
        refine_regions_compiled(
            regions.probs[:1], sizes[:1], regions.boxes[:1].tolist(), [first], [1], [(0, 0)], refinement
        )
    with pytest.raises(ValueError, match="1 regions but 2 sizes"):
        refine_regions_compiled(
            regions.probs[:1], sizes[:2], regions.boxes[:1].tolist(), [first], [0], [(0, 0)], refinement
        )
    with pytest.raises(ValueError, match="larger than its"):
        refine_regions_compiled(
            regions.probs[:1, :3, :3],
            sizes[:1],
            regions.boxes[:1].tolist(),
            [first],
            [0],
            [(0, 0)],
            refinement,
        )
    # A region wider than its box grown by pad would be written past the loops' grid: refused.
    (h, w), box = sizes[0], tuple(regions.boxes[0].tolist())
    with pytest.raises(ValueError, match="not its box grown by at most 4 pixels"):
        refine_regions_compiled(regions.probs[:1], [(h, w + 9)], [box], [first], [0], [(0, 0)], refinement)


def test_labeling_crops_are_normalised_in_the_same_pass() -> None:
    """The labeling batch's crops (normalised while written) equal the plain crops normalised."""
    from masklab.models.mal.labeling import _crop_windows

    image, margins = _image(3), labeling_margins((0.6, 0.6))
    plain, windows = crop_boxes(image, BOXES, margins, S)
    mean = np.array([123.675, 116.28, 103.53], dtype=np.float32)
    std = np.array([58.395, 57.12, 57.375], dtype=np.float32)
    out = np.empty((len(windows), S, S, 3), dtype=np.float32)
    _crop_windows(image, windows, mean, std, out)
    expected = (plain - torch.from_numpy(mean).view(1, 3, 1, 1)) / torch.from_numpy(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.from_numpy(out).permute(0, 3, 1, 2), expected, atol=1e-6, rtol=0)
