"""What the Inferencer runs on: arrays checked (not cast), folders expanded with collision-free names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.errors import DataError
from masklab.inference.inputs import check_unique_names, collect_inputs


def _png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def test_uint8_arrays_pass_through_unchanged() -> None:
    array = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    (item,) = collect_inputs(array)
    assert item.image.shape == (3, 4, 5)
    assert np.array_equal(item.image.permute(1, 2, 0).numpy(), array)
    # a BGR view (negative strides) is accepted too
    (flipped,) = collect_inputs(array[..., ::-1])
    assert np.array_equal(flipped.image.permute(1, 2, 0).numpy(), array[..., ::-1])


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (
            np.full((4, 4, 3), 0.5, np.float32),
            "input #1: array of dtype float32 with values 0.5..0.5; expected uint8",
        ),
        (
            np.full((4, 4, 3), 300, np.int32),
            "input #1: array of dtype int32 with values 300..300; expected uint8",
        ),
        (np.zeros((4, 4, 3), bool), "input #1: array of dtype bool"),
        (np.zeros((4, 4), np.uint8), "input #1: expected an (H, W, 3) RGB array"),
        (np.zeros((0, 4, 3), np.uint8), "input #1: empty image"),
    ],
    ids=["float01", "int32_300", "bool", "gray", "empty"],
)
def test_other_arrays_are_one_line_errors(array: np.ndarray, needle: str) -> None:
    ok = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(DataError) as info:
        collect_inputs([ok, array])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_folder_outputs_mirror_subfolders_and_keep_clashing_extensions(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ("a/x.png", "b/x.png", "a/x.jpg", "y.png"):
        _png(root / rel)
    _png(root / ".ipynb_checkpoints" / "y-checkpoint.png")
    _png(root / "a" / ".hidden.png")
    items = collect_inputs(root)
    assert {i.relative: i.name for i in items} == {
        "a/x.jpg": "a/x.jpg",
        "a/x.png": "a/x.png",
        "b/x.png": "b/x",
        "y.png": "y",
    }
    assert all(i.file_name == str(root / i.relative) for i in items)
    check_unique_names(items)


def test_a_file_given_directly_is_named_by_its_file_name(tmp_path: Path) -> None:
    (item,) = collect_inputs(_png(tmp_path / "deep" / "z.png"))
    assert (item.name, item.relative) == ("z", "z.png")


def test_inputs_that_would_overwrite_each_other_are_refused(tmp_path: Path) -> None:
    one, two = _png(tmp_path / "one" / "x.png"), _png(tmp_path / "two" / "x.png")
    items = collect_inputs([tmp_path / "one", tmp_path / "two"])
    with pytest.raises(DataError, match=f"{one} and {two}: both would be written as x.png"):
        check_unique_names(items)


def test_a_jpeg_with_exif_orientation_is_read_upright(tmp_path: Path) -> None:
    # Stored 6 wide x 4 tall with Orientation 6 (turn 90 degrees clockwise to view): shown 4 x 6,
    # as cv2.imread and detectron2's read_image give it.
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, :] = 255  # the stored top row becomes the right column when shown
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)
    for item in (collect_inputs(path)[0], collect_inputs(tmp_path)[0]):
        assert item.image.shape == (3, 6, 4)
        assert item.image[:, :, -1].float().mean() > 200 and item.image[:, :, 0].float().mean() < 50
