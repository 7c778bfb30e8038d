"""open_box_dataset: a wrong images[] size is named before the boxes it pushes outside the image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from masklab.errors import DataError
from masklab.models.mal.build import open_box_dataset


def _files(tmp_path: Path, declared: tuple[int, int]) -> tuple[Path, Path]:
    """One 160x96 (width x height) image declared as ``declared``; one box fits, one ends at x=140."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (160, 96), (90, 120, 30)).save(images / "a.png")
    raw = {
        "images": [{"id": 7, "file_name": "a.png", "width": declared[0], "height": declared[1]}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [110, 10, 30, 30]},
        ],
    }
    ann = tmp_path / "boxes.json"
    ann.write_text(json.dumps(raw))
    return ann, images


@pytest.mark.parametrize("training", [False, True])
def test_swapped_size_is_the_error(tmp_path: Path, training: bool) -> None:
    ann, images = _files(tmp_path, (96, 160))
    with pytest.raises(DataError) as err:
        open_box_dataset(ann, images, training=training, crop_size=32, min_obj_size=0)
    assert str(err.value) == (
        f"{ann}: images[0] (id=7): width/height 96x160 but the file {images / 'a.png'} is 160x96"
    )


def test_right_size_keeps_the_box_errors(tmp_path: Path) -> None:
    """The size is right (160x96) and a box is really outside: labeling blames the box, training drops it."""
    ann, images = _files(tmp_path, (160, 96))
    raw = json.loads(ann.read_text())
    raw["annotations"][1]["bbox"] = [170, 10, 30, 30]
    ann.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="lies outside its 160x96 image a.png"):
        open_box_dataset(ann, images, training=False, crop_size=32)
    dataset = open_box_dataset(ann, images, training=True, crop_size=32, min_obj_size=0)
    assert len(dataset) == 1 and dataset.skipped["outside_image"] == 1


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["dataset.min_obj_size=1e6"],
            "all skipped: 2 too_small (w or h <= 2 or area <= dataset.min_obj_size=1e+06)",
        ),
        (["dataset.max_obj_size=10"], "all skipped: 2 too_large (area > dataset.max_obj_size=10)"),
    ],
)
def test_a_train_split_with_no_usable_box_names_the_file_and_why(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    """Said "BoxCropDataset: the dataset is empty; check its paths and split file" (no file, no
    reason) from the loader, after the run had started."""
    from masklab.config.assemble import resolve
    from masklab.models.mal.build import build_mal_dataset

    ann, images = _files(tmp_path, (160, 96))
    config = Path(__file__).resolve().parents[3] / "configs" / "mal" / "mal_tiny_synthetic-64.yaml"
    rc = resolve(config, [f"dataset.train_ann_path={ann}", f"dataset.train_img_dir={images}", *overrides])
    with pytest.raises(DataError) as err:
        build_mal_dataset(rc, "train")
    assert str(err.value) == f"{ann}: no box left to train on (dataset.train_ann_path): {expected}"
