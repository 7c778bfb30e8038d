"""Reading a COCO results file: every RLE string is checked before pycocotools reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from masklab.data.coco import parse_coco
from masklab.data.coco.results import load_coco_results
from masklab.errors import DataError

GT = parse_coco(
    {
        "images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 12}],
        "categories": [{"id": 5, "name": "cat"}],
        "attributes": [{"name": "color", "values": ["red", "blue"]}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 1, 4, 3], "iscrowd": 0},
        ],
    }
)


def _det(counts: str, **extra: Any) -> dict[str, Any]:
    return {
        "image_id": 7,
        "category_id": 5,
        "bbox": [1, 1, 4, 3],
        "score": 0.9,
        "segmentation": {"size": [10, 12], "counts": counts},
        **extra,
    }


def _good_counts() -> str:
    mask = np.zeros((10, 12), np.uint8)
    mask[1:4, 1:5] = 1
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode()


@pytest.mark.parametrize(
    "extra",
    [{}, {"attributes": {"color": 1}, "attribute_scores": {"color": 0.8}}],
    ids=["plain", "with_attributes"],  # the inline fast path and the field-by-field path
)
def test_garbage_rle_in_results_is_one_line(tmp_path: Path, extra: dict[str, Any]) -> None:
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([_det(_good_counts(), **extra), _det("!!!!zz", **extra)]))
    with pytest.raises(DataError) as err:
        load_coco_results(path, GT)
    msg = str(err.value)
    assert "\n" not in msg and f"{path}: result [1]: field 'segmentation.counts'" in msg
    assert "'!'" in msg and "[10, 12]" in msg


def test_counts_for_another_size_are_refused(tmp_path: Path) -> None:
    other = np.zeros((5, 12), np.uint8)
    other[1:3, 1:5] = 1
    counts = mask_utils.encode(np.asfortranarray(other))["counts"].decode()  # 60 pixels, not 120
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([_det(counts)]))
    with pytest.raises(
        DataError, match=r"result \[0\]: field 'segmentation.counts' .*cover 60 pixels; expected 120"
    ):
        load_coco_results(path, GT)


def test_valid_results_still_load(tmp_path: Path) -> None:
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([_det(_good_counts()), _det(_good_counts(), attributes={"color": 0})]))
    a, b = load_coco_results(path, GT)
    assert a.area == 12.0 and b.attributes == {"color": 0}


@pytest.mark.parametrize(
    ("scores", "needle"),
    [
        ({"color": "high"}, "field 'attribute_scores.color' is 'high'"),
        ({"color": [0.5]}, "field 'attribute_scores.color' is [0.5]"),
        ({"color": 1.5}, "field 'attribute_scores.color' is 1.5"),
        ({"size": 0.5}, "field 'attribute_scores.size' is not an attribute"),
    ],
)
def test_bad_attribute_scores_are_one_line(tmp_path: Path, scores: dict[str, Any], needle: str) -> None:
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([_det(_good_counts(), attributes={"color": 1}, attribute_scores=scores)]))
    with pytest.raises(DataError) as err:
        load_coco_results(path, GT)
    msg = str(err.value)
    assert "\n" not in msg and f"{path}: result [0]: {needle}" in msg


def test_attributes_are_ignored_against_a_ground_truth_without_attributes(tmp_path: Path) -> None:
    """``evaluate coco`` gives attribute metrics "when both files carry attributes": AP only otherwise."""
    plain = parse_coco(
        {
            "images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 12}],
            "categories": [{"id": 5, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 1, 4, 3], "iscrowd": 0}],
        }
    )
    path = tmp_path / "pred.json"
    path.write_text(
        json.dumps([_det(_good_counts(), attributes={"color": 1}, attribute_scores={"color": 0.8})])
    )
    (det,) = load_coco_results(path, plain)
    assert det.attributes == {} and det.attribute_scores == {} and det.category_id == 5
