"""Data checks: each test plants one bug in a copy of the synthetic dataset and sees it caught."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

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
