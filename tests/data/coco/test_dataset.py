"""CocoInstanceDataset: samples with contiguous labels, attributes, crowd -> ignore."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from masklab.config.registries import DATASETS
from masklab.data.datasets.coco import CocoInstanceDataset


def _make(tmp_path: Path) -> Path:
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "b.png")
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "height": 10, "width": 12},
            {"id": 9, "file_name": "b.png", "height": 6, "width": 8},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],
        "attributes": [{"name": "color", "values": ["red", "blue"]}],
        "annotations": [
            {
                "id": 11,
                "image_id": 7,
                "category_id": 5,
                "bbox": [1, 1, 4, 3],
                "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]],
                "iscrowd": 0,
                "attributes": {"color": 1},
            },
            {"id": 12, "image_id": 7, "category_id": 2, "bbox": [6, 5, 3, 2], "iscrowd": 1},
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def test_sample_contents(tmp_path: Path) -> None:
    ds = CocoInstanceDataset(str(_make(tmp_path)), str(tmp_path))
    assert len(ds) == 2 and ds.metainfo.classes == ("dog", "cat") and ds.metainfo.category_ids == (2, 5)
    s = ds[0]
    inst = s.instances
    assert s.meta.image_id == 7 and s.image.shape == (3, 10, 12)
    assert inst.labels.tolist() == [1, 0]  # cat id 5 -> label 1, dog id 2 -> label 0
    assert inst.ignore.tolist() == [False, True]
    assert inst.ids.tolist() == [11, 12]
    assert inst.attributes["color"].tolist() == [1, -1]
    assert torch.equal(inst.boxes[1], torch.tensor([6.0, 5.0, 9.0, 7.0]))
    assert inst.masks[1].sum() == 6  # box-only annotation -> filled box mask
    empty = ds[1].instances
    assert len(empty) == 0 and empty.image_size == (6, 8)


def test_filter_empty_and_registry(tmp_path: Path) -> None:
    ds = DATASETS.get("CocoInstanceDataset")(str(_make(tmp_path)), str(tmp_path), filter_empty=True)
    assert [im.id for im in ds.images] == [7]


def test_missing_image_file_names_the_entry(tmp_path: Path) -> None:
    import pytest

    from masklab.errors import DataError

    path = _make(tmp_path)
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "nope.png"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoInstanceDataset(str(path), str(tmp_path))
    assert str(err.value) == (
        f"{path}: images[id=9].file_name 'nope.png': no such file under {tmp_path} (1 of 2 images missing)"
    )
    del data["images"][1]["file_name"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"gt\.json: images\[id=9\]: missing 'file_name'"):
        CocoInstanceDataset(str(path), str(tmp_path))
    # Only the images the dataset uses must exist: image 9 has no annotation.
    assert len(CocoInstanceDataset(str(path), str(tmp_path), filter_empty=True)) == 1
