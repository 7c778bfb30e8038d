from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from masklab.data.synthetic import synth_meta, synthesize
from masklab.data.synthetic_render import COLORS, PATTERNS, SHAPES

# pycocotools' decode trips a NumPy 2 copy-keyword DeprecationWarning on every call; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", num_train=4, num_val=2, size=64, seed=5, workers=1)
    synthesize(tmp_path / "b", num_train=4, num_val=2, size=64, seed=5, workers=2)  # processes: same bytes
    synthesize(tmp_path / "c", num_train=4, num_val=2, size=64, seed=6)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert not a.skipped and len(fa) == 4 + 4 + 2 + 2 + 2 + 2  # images, labels, 2 json, meta, synth
    assert fa == fb
    assert fa["images/train/000000.png"] != fc["images/train/000000.png"]


def test_skip_when_complete_and_regenerate_when_params_change(tmp_path: Path) -> None:
    root = tmp_path / "d"
    synthesize(root, num_train=2, num_val=1, size=48)
    assert synthesize(root, num_train=2, num_val=1, size=48).skipped
    again = synthesize(root, num_train=3, num_val=1, size=48)
    assert not again.skipped and len(list((root / "images" / "train").glob("*.png"))) == 3
    (root / "synth.json").unlink()  # an interrupted run never wrote the marker
    assert not synthesize(root, num_train=3, num_val=1, size=48).skipped
    assert not list(root.glob(".synth-tmp-*"))


def test_coco_json_matches_semantic_labels(synth_root: Path) -> None:
    coco = COCO(str(synth_root / "annotations" / "train.json"))
    data = json.loads((synth_root / "annotations" / "train.json").read_text())
    assert [a["name"] for a in data["attributes"]] == ["color", "pattern"]
    assert [c["id"] for c in data["categories"]] == list(range(1, len(SHAPES) + 1))
    for img in coco.dataset["images"]:
        label = np.asarray(Image.open(synth_root / "labels" / "train" / img["file_name"]))
        assert (synth_root / "images" / "train" / img["file_name"]).is_file()
        union = np.zeros_like(label, dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            m = coco.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"] > 0
            assert (label[m] == ann["category_id"]).all()  # instance pixels carry the class id
            assert not (union & m).any()  # visible parts never overlap
            union |= m
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert isinstance(ann["segmentation"]["counts"], str)
            assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), m)
        assert ((label > 0) == union).all()  # every foreground pixel belongs to an instance


def test_every_class_and_attribute_value_occurs(synth_root: Path) -> None:
    anns = []
    for split in ("train", "val"):
        anns += json.loads((synth_root / "annotations" / f"{split}.json").read_text())["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, len(SHAPES) + 1))
    assert {a["attributes"]["color"] for a in anns} == set(range(len(COLORS)))
    assert {a["attributes"]["pattern"] for a in anns} == set(range(len(PATTERNS)))
    meta = json.loads((synth_root / "meta.json").read_text())
    assert meta["classes"] == ["background", *SHAPES] == list(synth_meta().classes)


def test_hollow_and_thin_shapes_exist(synth_root: Path) -> None:
    data = json.loads((synth_root / "annotations" / "train.json").read_text())
    ring, bar = SHAPES.index("ring") + 1, SHAPES.index("bar") + 1
    hollow = thin = 0
    for ann in data["annotations"]:
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        if ann["category_id"] == ring:
            # a hole: pixels enclosed by the ring that are not part of it
            hollow += int((ndimage.binary_fill_holes(m) & ~m).sum() > 10)
        if ann["category_id"] == bar:
            thin += int(ndimage.distance_transform_edt(m).max() <= 4)
    assert hollow >= 1 and thin >= 1


def _synth_in_daemon(root: str, queue) -> None:  # noqa: ANN001 - multiprocessing queue
    try:
        synthesize(root, num_train=3, num_val=1, size=48, seed=1, workers=2)
        queue.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        queue.put(repr(exc))


def test_workers_fall_back_to_one_process_inside_a_daemon(tmp_path: Path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_synth_in_daemon, args=(str(tmp_path / "d"), queue), daemon=True)
    proc.start()
    result = queue.get(timeout=60)
    proc.join(timeout=60)
    assert result == "ok"
    assert len(list((tmp_path / "d" / "images" / "train").glob("*.png"))) == 3


def test_an_empty_split_is_written_as_an_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "d"
    report = synthesize(root, num_train=0, num_val=1, size=32, workers=1)
    assert report.num_images == {"train": 0, "val": 1} and report.num_instances["train"] == 0
    assert not list((root / "images" / "train").iterdir()) and (root / "labels" / "train").is_dir()
    assert json.loads((root / "annotations" / "train.json").read_text())["images"] == []
    assert (root / "synth.json").is_file() and synthesize(root, num_train=0, num_val=1, size=32).skipped
