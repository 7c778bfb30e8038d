"""COCO loading: records, id mapping, attributes, and one-line errors or counted skips."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from masklab.data.coco import ann_to_mask, load_coco
from masklab.errors import DataError


def _coco() -> dict[str, Any]:
    return {
        "images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 12}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],
        "attributes": [{"name": "color", "values": ["red", "blue"]}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 5,
                "bbox": [1, 1, 4, 3],
                "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]],
                "area": 12,
                "iscrowd": 0,
                "attributes": {"color": 1},
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 2,
                "bbox": [0, 0, 2, 2],
                "segmentation": {"size": [10, 12], "counts": [0, 2, 8, 2, 108]},
                "iscrowd": 1,
            },
        ],
    }


def _write(tmp_path: Path, data: Any, name: str = "gt.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_records_and_attributes(tmp_path: Path) -> None:
    coco = load_coco(_write(tmp_path, _coco()))
    assert coco.category_ids == (2, 5)
    a, b = coco.annotations
    assert a.attributes == {"color": 1} and b.attributes == {}
    assert b.iscrowd and b.area == 4.0  # area derived from the RLE when the file leaves it out
    mask = ann_to_mask(b, coco.images[0])
    assert mask.shape == (10, 12) and mask.sum() == 4 and mask[:2, :2].all()
    assert coco.attributes[0].values == ("red", "blue")


def test_attribute_value_by_name(tmp_path: Path) -> None:
    data = _coco()
    data["annotations"][0]["attributes"] = {"color": "red"}
    assert load_coco(_write(tmp_path, data)).annotations[0].attributes == {"color": 0}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["annotations"][0].update(image_id=99), "annotation id=1: field 'image_id'"),
        (lambda d: d["annotations"][0].update(category_id=3), "annotation id=1: field 'category_id'"),
        (lambda d: d["annotations"][0].update(attributes={"size": 0}), "field 'attributes.size'"),
        (lambda d: d["annotations"][0].update(attributes={"color": 2}), "field 'attributes.color'"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "field 'segmentation[0]'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, -2, 3]), "field 'bbox'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 3]), "field 'bbox'"),
        (lambda d: d["annotations"][1].update(id=1), "annotation id=1: field 'id' duplicates"),
        (lambda d: d["annotations"][1]["segmentation"].update(size=[5, 5]), "field 'segmentation.size'"),
    ],
)
def test_bad_annotation_raises_one_line_or_is_counted(tmp_path: Path, mutate: Any, needle: str) -> None:
    data = copy.deepcopy(_coco())
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(DataError) as err:
        load_coco(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and needle in msg
    skipped = load_coco(path, on_bad="skip")
    assert len(skipped.annotations) == 1 and skipped.skipped.total == 1


def test_structural_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_coco())[:-20])
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(path)
    data = _coco()
    data["images"].append(dict(data["images"][0]))
    with pytest.raises(DataError, match="image id=7: field 'id' duplicates"):
        load_coco(_write(tmp_path, data), on_bad="skip")


def test_attributes_required(tmp_path: Path) -> None:
    path = _write(tmp_path, _coco())
    with pytest.raises(DataError, match="annotation id=2: field 'attributes' lacks"):
        load_coco(path, attributes_required=True)
    assert load_coco(path, attributes_required=True, on_bad="skip").skipped.bad_attribute == 1


def test_bbox_derived_from_polygon(tmp_path: Path) -> None:
    data = _coco()
    del data["annotations"][0]["bbox"]
    ann = load_coco(_write(tmp_path, data)).annotations[0]
    assert np.allclose(ann.bbox, (1, 1, 4, 3))
