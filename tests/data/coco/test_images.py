"""read_coco_image: the pixels of an ``images`` entry, checked against its stated size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.data.coco.images import read_coco_image
from masklab.data.coco.records import CocoImage
from masklab.errors import DataError


def test_reads_pixels_and_refuses_a_size_the_file_does_not_state(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((6, 9, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    pixels = read_coco_image(tmp_path, CocoImage(id=3, file_name="a.png", height=6, width=9), "ann.json")
    assert tuple(pixels.shape) == (3, 6, 9)
    with pytest.raises(DataError, match=r"a\.png: image is 6x9 \(HxW\) but ann\.json says image id=3 is 9x6"):
        read_coco_image(tmp_path, CocoImage(id=3, file_name="a.png", height=9, width=6), "ann.json")


def test_missing_file_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_coco_image(tmp_path, CocoImage(id=7, file_name="nope.png", height=6, width=9), "ann.json")
    assert str(err.value) == f"ann.json: images[id=7].file_name 'nope.png': no such file under {tmp_path}"
    with pytest.raises(DataError, match=r"ann\.json: images\[id=7\]: missing 'file_name'"):
        read_coco_image(tmp_path, CocoImage(id=7, file_name="", height=6, width=9), "ann.json")
