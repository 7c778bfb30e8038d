"""Data checks: each test plants one bug in a copy of the synthetic dataset and sees it caught."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.data.coco.rle import encode_masks
from masklab.doctor import DoctorContext
from masklab.doctor.checks.data_coco import check_coco_annotations, scan_coco
from masklab.doctor.checks.data_labels import (
    check_images_readable,
    check_label_values,
    check_reduce_zero_label,
)
from masklab.doctor.finding import worst

Ctx = Callable[..., DoctorContext]


def test_clean_labels_and_images_pass(synth_root: Path, make_ctx: Ctx) -> None:
    ctx = make_ctx(synth_root)
    found = check_label_values(ctx) + check_images_readable(ctx)
    assert [f.status for f in found] == ["ok"] * 4
    assert "histogram {0:" in found[0].evidence


def test_label_out_of_range_names_file_and_value(data_copy: Path, make_ctx: Ctx) -> None:
    bad = data_copy / "labels" / "train" / "000001.png"
    arr = np.array(Image.open(bad))
    arr[0, :3] = 9  # 7 classes: 9 is neither a class nor ignore
    Image.fromarray(arr).save(bad)
    found = {f.check: f for f in check_label_values(make_ctx(data_copy))}
    f = found["data.labels[train]"]
    assert f.status == "error" and str(bad) in f.evidence and "[9]" in f.evidence and "9:3" in f.evidence
    assert found["data.labels[val]"].status == "ok"


def test_truncated_image_is_caught(data_copy: Path, make_ctx: Ctx) -> None:
    img = data_copy / "images" / "val" / "000000.png"
    img.write_bytes(img.read_bytes()[:60])
    found = {f.check: f for f in check_images_readable(make_ctx(data_copy))}
    assert found["data.images[val]"].status == "error" and str(img) in found["data.images[val]"].evidence
    assert found["data.images[train]"].status == "ok"


def test_reduce_zero_label_on_binary_dataset(tmp_path: Path, data_copy: Path, make_ctx: Ctx) -> None:
    node = "{type: FolderSegDataset, img_dir: %s, ann_dir: %s, img_suffix: .png, classes: [bg, fg], reduce_zero_label: true}"
    root = data_copy
    ctx = make_ctx(
        root,
        "dataset.train=" + node % (root / "images/train", root / "labels/train"),
        "dataset.val=" + node % (root / "images/val", root / "labels/val"),
    )
    found = check_reduce_zero_label(ctx)
    assert [f.status for f in found] == ["error", "error"]
    assert "binary" in found[0].evidence and "reduce_zero_label" in found[0].evidence


def _coco(tmp: Path, root: Path, mutate: Callable[[dict], None]) -> Path:
    data = json.loads((root / "annotations" / "train.json").read_text())
    mutate(data)
    path = tmp / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_scan_coco_finds_each_planted_problem(synth_root: Path) -> None:
    data = json.loads((synth_root / "annotations" / "train.json").read_text())
    assert scan_coco(data, "x") == {}
    a = data["annotations"]
    a[0]["category_id"] = 99
    a[1]["attributes"] = {"color": 7}
    a[2]["bbox"] = [3, 3, 0, 5]
    a[3]["bbox"] = [60, 60, 20, 20]
    a[4]["id"] = a[5]["id"]
    a[5]["attributes"] = {"size": 1}
    found = scan_coco(data, "x")
    assert set(found) == {"category", "attribute", "degenerate", "outside", "duplicate_id"}
    assert "99" in found["category"][0] and "color=7" in found["attribute"][0]
    assert "'size'" in found["attribute"][1] and "[60, 60, 20, 20]" in found["outside"][0]


def test_coco_check_through_config(tmp_path: Path, synth_root: Path, make_ctx: Ctx) -> None:
    def empty_mask(d: dict) -> None:
        d["annotations"][0]["segmentation"] = [[1, 1, 2, 2, 3, 3]]  # collinear: zero area

    ann = _coco(tmp_path, synth_root, empty_mask)
    node = f"{{type: CocoInstanceDataset, ann_file: {ann}, img_dir: {synth_root / 'images/train'}}}"
    ctx = make_ctx(synth_root, f"dataset.train={node}", f"dataset.val={node}")
    found = check_coco_annotations(ctx)
    assert worst(found) == "error"
    assert any(f.check == "data.coco[train].degenerate" and "zero area" in f.evidence for f in found)


def test_coco_paths_resolve_against_dataset_root(synth_root: Path, make_ctx: Ctx) -> None:
    # The instance configs write paths relative to dataset.root; the doctor must read the same files.
    node = "{type: CocoInstanceDataset, ann_file: annotations/train.json, img_dir: images/train}"
    ctx = make_ctx(synth_root, f"dataset.root={synth_root}", f"dataset.train={node}", f"dataset.val={node}")
    found = check_coco_annotations(ctx)
    assert found and all("not found" not in f.evidence for f in found)
    assert any(f.status == "ok" and "annotations" in f.evidence for f in found)


def _set_segmentation(data: dict, segm: object, iscrowd: int = 0) -> None:
    data["annotations"][0]["segmentation"] = segm
    data["annotations"][0]["iscrowd"] = iscrowd


@pytest.mark.parametrize(
    ("segm", "needle"),
    [
        ([[200, 200, 230, 200, 230, 230, 200, 230]], "polygons have zero area inside"),  # outside
        ([[1, 1, 2, 2, 3, 3]], "polygons have zero area inside"),  # collinear
        (encode_masks(np.zeros((1, 64, 64), dtype=bool))[0], "RLE has zero area"),  # compressed
        ({"size": [64, 64], "counts": [64 * 64]}, "RLE has zero area"),  # uncompressed, all zeros
    ],
)
def test_zero_area_masks_of_any_kind_are_degenerate(synth_root: Path, segm: object, needle: str) -> None:
    data = json.loads((synth_root / "annotations" / "train.json").read_text())
    _set_segmentation(data, segm)
    found = scan_coco(data, "x")
    assert set(found) == {"degenerate"} and needle in found["degenerate"][0], found
    _set_segmentation(data, segm, iscrowd=1)  # a crowd region is ignored in training: no problem
    assert "zero area" not in json.dumps(scan_coco(data, "x"))


def test_rle_that_does_not_decode_is_reported(synth_root: Path) -> None:
    data = json.loads((synth_root / "annotations" / "train.json").read_text())
    last = data["annotations"][-1]
    last["segmentation"] = {"size": last["segmentation"]["size"], "counts": "!!!!zz"}
    found = scan_coco(data, "x")
    assert set(found) == {"rle"} and f"id={last['id']}" in found["rle"][0] and "'!!!!zz'" in found["rle"][0]
    # Masks are rasterised for the first max_images images only (--max-files).
    assert scan_coco(data, "x", max_images=1) == {}


def test_zero_area_advice_matches_the_loader(tmp_path: Path, synth_root: Path, make_ctx: Ctx) -> None:
    ann = _coco(tmp_path, synth_root, lambda d: _set_segmentation(d, [[70, 70, 90, 70, 90, 90]]))
    node = f"{{type: CocoInstanceDataset, ann_file: {ann}, img_dir: {synth_root / 'images/train'}}}"
    ctx = make_ctx(synth_root, f"dataset.train={node}", f"dataset.val={node}")
    (f,) = [f for f in check_coco_annotations(ctx) if f.check == "data.coco[train].degenerate"]
    assert f.status == "error" and "zero area inside the 64x64 image" in f.evidence
    assert "dataset.train.on_bad: skip" in f.advice
