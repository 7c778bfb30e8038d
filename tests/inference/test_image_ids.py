"""--image-ids: inputs matched to a COCO file's images by relative path, then unique base name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masklab.errors import DataError
from masklab.inference.image_ids import coco_image_ids, lookup_image_ids


def _coco(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "gt.json"
    images = [{"id": 10 + i, "file_name": n, "height": 4, "width": 4} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return path


def test_relative_path_first_then_a_unique_base_name(tmp_path: Path) -> None:
    ids = coco_image_ids(_coco(tmp_path, ["val/a.png", "val/b.png", "train/b.png"]))
    assert lookup_image_ids(["val/b.png", "a.png", "sub/a.png"], ids, "gt.json") == [11, 10, 10]
    with pytest.raises(DataError, match=r"gt\.json: no image with file_name 'b\.png'"):
        lookup_image_ids(["b.png"], ids, "gt.json")  # two images are called b.png: ambiguous


def test_a_file_without_images_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    with pytest.raises(DataError, match=r"x\.json: expected a COCO file with an 'images' list"):
        coco_image_ids(bad)
