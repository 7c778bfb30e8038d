"""Train and val metadata must agree: refused up front, naming both files and the first difference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from masklab.data.datasets.coco import CocoInstanceDataset
from masklab.data.datasets.semantic import FolderSegDataset
from masklab.data.meta import AttributeMeta, DatasetMeta
from masklab.data.split_meta import check_same_meta, meta_difference
from masklab.errors import DataError

NAMES = {1: "cat", 3: "cow", 5: "dog", 9: "bird"}


def _coco(tmp_path: Path, name: str, ids: list[int], attributes: list[dict] | None = None) -> str:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    data: dict[str, Any] = {
        "images": [{"id": 11, "file_name": "a.png", "height": 8, "width": 8}],
        "categories": [{"id": i, "name": NAMES[i]} for i in ids],
        "annotations": [{"id": 1, "image_id": 11, "category_id": ids[0], "bbox": [1, 1, 3, 3]}],
    }
    if attributes is not None:
        data["attributes"] = attributes
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_extra_val_category_is_refused(tmp_path: Path) -> None:
    train = CocoInstanceDataset(_coco(tmp_path, "train.json", [1, 5, 9]), str(tmp_path))
    val = CocoInstanceDataset(_coco(tmp_path, "val.json", [1, 3, 5, 9]), str(tmp_path))
    with pytest.raises(DataError) as err:
        check_same_meta(train, val, "cfg.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"cfg.yaml: dataset.train (ann_file {tmp_path / 'train.json'}) and dataset.val "
        f"(ann_file {tmp_path / 'val.json'}) disagree on their labels: label 1 is 'dog' (category id 5) "
        "in train (3 classes) but 'cow' (category id 3) in val (4 classes)"
    )


def test_missing_val_category_is_refused(tmp_path: Path) -> None:
    train = CocoInstanceDataset(_coco(tmp_path, "train.json", [1, 5, 9]), str(tmp_path))
    val = CocoInstanceDataset(_coco(tmp_path, "val.json", [1, 5]), str(tmp_path))
    with pytest.raises(
        DataError, match=r"label 2 is 'bird' \(category id 9\) in train \(3 classes\) but missing in val"
    ):
        check_same_meta(train, val)


def test_attribute_values_must_agree(tmp_path: Path) -> None:
    colors = [{"name": "color", "values": ["red", "blue"]}]
    train = CocoInstanceDataset(_coco(tmp_path, "train.json", [1, 5], colors), str(tmp_path))
    same = CocoInstanceDataset(_coco(tmp_path, "same.json", [1, 5], colors), str(tmp_path))
    check_same_meta(train, same)  # equal metadata: nothing to say
    other = [{"name": "color", "values": ["blue", "red"]}]
    val = CocoInstanceDataset(_coco(tmp_path, "val.json", [1, 5], other), str(tmp_path))
    with pytest.raises(
        DataError, match=r"attribute 'color' values: train has \['red', 'blue'\], val has \['blue', 'red'\]"
    ):
        check_same_meta(train, val)
    none = CocoInstanceDataset(_coco(tmp_path, "none.json", [1, 5]), str(tmp_path))
    with pytest.raises(DataError, match=r"attributes: train has \['color'\], val has \[\]"):
        check_same_meta(train, none)


def test_semantic_classes_must_agree(tmp_path: Path) -> None:
    for split in ("img", "ann"):
        (tmp_path / split).mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "ann" / "a.png")

    def make(classes: tuple[str, ...]) -> FolderSegDataset:
        return FolderSegDataset(tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=classes)

    check_same_meta(make(("sky", "road")), make(("sky", "road")))
    with pytest.raises(DataError, match=r"label 1 is 'road' in train \(2 classes\) but 'car' in val"):
        check_same_meta(make(("sky", "road")), make(("sky", "car")))


def test_meta_difference_covers_ignore_index() -> None:
    a = DatasetMeta(("x",), attributes=(AttributeMeta("c", ("r",)),))
    assert meta_difference(a, a) is None
    assert meta_difference(a, DatasetMeta(("x",), attributes=a.attributes, ignore_index=0)) == (
        "ignore_index: a has 255, b has 0"
    )


def test_build_trainer_refuses_before_writing_anything(tmp_path: Path) -> None:
    from masklab.config.assemble import build_trainer, resolve
    from masklab.data.synthetic import synthesize

    root = tmp_path / "data"
    synthesize(root, num_train=2, num_val=2, size=64, seed=0, max_objects=2)
    val = root / "annotations" / "val.json"
    data = json.loads(val.read_text())
    data["categories"].insert(0, {"id": 0, "name": "extra"})  # shifts every label of the val set
    val.write_text(json.dumps(data))
    config = (
        Path(__file__).resolve().parents[2]
        / "configs/mask2former/mask2former_r18_1xb8-1000i_synthetic-128x128.yaml"
    )
    rc = resolve(config, [f"dataset.root={root}", "runtime.device=cpu"])
    with pytest.raises(
        DataError, match=r"dataset\.val \(ann_file .*val\.json\) disagree on their labels: label 0 is"
    ):
        build_trainer(rc, work_dir=tmp_path / "work", progress=False)
    assert not (tmp_path / "work").exists()


def test_checkpoint_classes_must_match_the_evaluated_data(tmp_path: Path) -> None:
    """Same classes in another order build the same model and load the same weights: only the
    checkpoint's stored class list tells the metrics would be wrong."""
    from masklab.data.split_meta import check_checkpoint_meta

    for split in ("img", "ann"):
        (tmp_path / split).mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "ann" / "a.png")
    val = FolderSegDataset(tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("road", "car"))
    trained = DatasetMeta(("car", "road")).to_json()
    with pytest.raises(DataError) as err:
        check_checkpoint_meta(trained, val, "ckpt.pth")
    assert str(err.value).startswith(
        "ckpt.pth: the checkpoint was trained on classes ['car', 'road'] but dataset.val "
        "(FolderSegDataset 'classes' argument) has ['road', 'car']: label 0 is 'car' in the checkpoint "
        "(2 classes) but 'road' in dataset.val (2 classes)"
    )
    check_checkpoint_meta(DatasetMeta(("road", "car")).to_json(), val, "ckpt.pth")  # agrees
    check_checkpoint_meta(None, val, "ckpt.pth")  # nothing stored: nothing to compare
    # A semantic model predicts no attributes: only the classes matter there.
    with_attrs = DatasetMeta(("road", "car"), attributes=(AttributeMeta("c", ("r",)),)).to_json()
    check_checkpoint_meta(with_attrs, val, "ckpt.pth", attributes=False)
    with pytest.raises(DataError, match=r"attributes: the checkpoint has \['c'\], dataset.val has \[\]"):
        check_checkpoint_meta(with_attrs, val, "ckpt.pth")
