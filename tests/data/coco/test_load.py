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


def test_truncated_json_message_reads_once(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"images": [{"file_name": "a.pn')
    with pytest.raises(DataError) as err:
        load_coco(path)
    assert "at at" not in str(err.value) and "(line 1, column" in str(err.value)


@pytest.mark.parametrize("counts", ["!!!!zz", "PPP", "0;0", "", "1O"])
def test_corrupt_rle_counts_name_the_field(tmp_path: Path, counts: str) -> None:
    data = _coco()
    data["annotations"][1]["segmentation"] = {"size": [10, 12], "counts": counts}
    path = _write(tmp_path, data)
    with pytest.raises(DataError) as err:
        load_coco(path)
    msg = str(err.value)
    assert "\n" not in msg and f"{path}: annotation id=2: field 'segmentation.counts'" in msg
    assert "[10, 12]" in msg
    skipped = load_coco(path, on_bad="skip")
    assert skipped.skipped.bad_segmentation == 1 and [a.id for a in skipped.annotations] == [1]


def test_valid_rle_strings_load_with_their_area(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    data = _coco()
    data["annotations"][0].pop("area")
    data["annotations"][0].pop("bbox")
    data["annotations"][0]["segmentation"] = {"size": [10, 12], "counts": rle["counts"].decode()}
    ann = load_coco(_write(tmp_path, data)).annotations[0]
    assert ann.area == 18 and np.allclose(ann.bbox, (3, 2, 6, 3))


@pytest.mark.parametrize(
    ("segmentation", "needle"),
    [
        ([[10, 10, 20, 20, 30, 30]], "zero area"),  # collinear
        ([[1, 1, 3, 3, 1, 1, 3, 3]], "zero area"),  # back and forth on one line
        ([[100, 100, 120, 100, 120, 120]], "outside the image"),  # the image is 12x10
        ([[3.1, 2.1, 3.4, 2.1, 3.4, 2.4]], "covers no pixel"),  # between pixel centres
        ({"size": [10, 12], "counts": [120]}, "without foreground"),  # all-zero RLE, list counts
        ({"size": [10, 12], "counts": "h3"}, "without foreground"),  # all-zero RLE, string counts
    ],
)
def test_empty_instance_masks_raise_or_are_counted(tmp_path: Path, segmentation: Any, needle: str) -> None:
    data = _coco()
    data["annotations"][0]["segmentation"] = segmentation
    path = _write(tmp_path, data)
    with pytest.raises(DataError) as err:
        load_coco(path)
    msg = str(err.value)
    assert "\n" not in msg and f"{path}: annotation id=1: field 'segmentation'" in msg and needle in msg
    skipped = load_coco(path, on_bad="skip")
    assert skipped.skipped.empty_mask == 1 and skipped.skipped.total == 1
    assert [a.id for a in skipped.annotations] == [2]


def test_empty_crowd_region_and_border_polygon_are_kept(tmp_path: Path) -> None:
    data = _coco()
    data["annotations"][1]["segmentation"] = {"size": [10, 12], "counts": [120]}  # crowd: harmless
    data["annotations"][0]["segmentation"] = [[-5, -5, 4, -5, 4, 3, -5, 3]]  # clipped to 4x3 pixels
    data["annotations"][0].pop("bbox")
    coco = load_coco(_write(tmp_path, data))
    assert len(coco.annotations) == 2 and coco.skipped.total == 0


@pytest.mark.parametrize("flag", ["0", "1", 2, -1, 0.0, None])
def test_iscrowd_must_be_zero_or_one(tmp_path: Path, flag: Any) -> None:
    data = _coco()
    data["annotations"][0]["iscrowd"] = flag
    path = _write(tmp_path, data)
    for on_bad in ("error", "skip"):
        with pytest.raises(DataError, match=r"annotation id=1: field 'iscrowd' is .*expected 0 or 1"):
            load_coco(path, on_bad=on_bad)


def test_iscrowd_accepts_booleans(tmp_path: Path) -> None:
    data = _coco()
    data["annotations"][0]["iscrowd"] = False
    data["annotations"][1]["iscrowd"] = True
    a, b = load_coco(_write(tmp_path, data)).annotations
    assert not a.iscrowd and b.iscrowd


def test_duplicate_names_in_the_metadata_raise(tmp_path: Path) -> None:
    data = _coco()
    data["categories"][1]["name"] = "cat"
    with pytest.raises(
        DataError, match=r"category id=2: field 'name' 'cat' is also the name of category id=5"
    ):
        load_coco(_write(tmp_path, data), on_bad="skip")
    data = _coco()
    data["attributes"][0]["values"] = ["red", "blue", "red"]
    with pytest.raises(DataError, match=r"attributes\[0\] \('color'\): value 'red' is listed twice"):
        load_coco(_write(tmp_path, data), on_bad="skip")
