"""COCO loading keeps a detector ``score`` per annotation (MAL labels detections as prompts)."""

from __future__ import annotations

from typing import Any

import pytest

from masklab.data.coco import parse_coco
from masklab.errors import DataError


def _boxes(*scores: Any) -> dict[str, Any]:
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 3]} for i in range(len(scores))]
    for ann, score in zip(anns, scores, strict=True):
        if score != "absent":
            ann["score"] = score
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": anns,
    }


def test_score_is_kept_and_absent_is_none() -> None:
    coco = parse_coco(_boxes(0.25, 1, "absent"))
    assert [a.score for a in coco.annotations] == [0.25, 1.0, None]


@pytest.mark.parametrize("bad", ["0.9", True, float("nan")])
def test_bad_score_is_a_one_line_error_or_a_counted_skip(bad: Any) -> None:
    with pytest.raises(DataError, match="annotation id=1: field 'score'") as info:
        parse_coco(_boxes(bad))
    assert "\n" not in str(info.value)
    coco = parse_coco(_boxes(bad, 0.5), on_bad="skip")
    assert [a.id for a in coco.annotations] == [2] and coco.skipped.bad_box == 1
