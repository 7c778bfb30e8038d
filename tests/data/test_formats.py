"""The named dataset layouts (Cityscapes, ADE20K, VOC), made on disk as tiny images in each layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.config.assemble import build_dataset, resolve
from masklab.config.registries import DATASETS
from masklab.data.datasets.ade20k import ADE20KDataset
from masklab.data.datasets.cityscapes import CITYSCAPES_LABEL_ID_TO_TRAIN_ID, CityscapesDataset
from masklab.data.datasets.voc import VOCDataset
from masklab.errors import DataError


def _image(path: Path, h: int = 4, w: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 7, np.uint8)).save(path)


def _label(path: Path, values: list[list[int]], palette_png: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(values, np.uint8))
    if palette_png:  # VOC stores palette PNGs; the indices are the class ids
        img = img.convert("P")
        img.putpalette([c for i in range(256) for c in (i, 255 - i, 0)])
    img.save(path)


LABEL = [[0, 1, 2, 255, 13, 18]] * 4


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    for subset, frames in (
        ("train", ["aachen_000000_000019", "bremen_000001_000019"]),
        ("val", ["lindau_000000_000019"]),
    ):
        for frame in frames:
            city = frame.split("_")[0]
            _image(tmp_path / "leftImg8bit" / subset / city / f"{frame}_leftImg8bit.png")
            stem = tmp_path / "gtFine" / subset / city / f"{frame}_gtFine"
            _label(Path(f"{stem}_labelTrainIds.png"), LABEL)
            _label(Path(f"{stem}_labelIds.png"), [[7, 8, 11, 0, 26, 33]] * 4)
            _image(Path(f"{stem}_color.png"))  # present in the official download; must be ignored
    return tmp_path


def test_cityscapes_discovers_city_subfolders(cityscapes: Path) -> None:
    ds = CityscapesDataset(root=cityscapes)
    assert DATASETS.get("CityscapesDataset") is CityscapesDataset
    assert len(ds) == 2 and ds.metainfo.num_classes == 19 and ds.metainfo.palette[0] == (128, 64, 128)
    img, seg = ds.items[1]
    assert (
        img.relative_to(cityscapes).as_posix()
        == "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png"
    )
    assert (
        seg.relative_to(cityscapes).as_posix()
        == "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png"
    )
    assert ds[0].semantic[0].tolist() == [0, 1, 2, 255, 13, 18]
    assert len(CityscapesDataset(root=cityscapes, subset="val")) == 1


def test_cityscapes_label_ids_and_class_subset(cityscapes: Path) -> None:
    raw = CityscapesDataset(
        root=cityscapes, seg_map_suffix="_gtFine_labelIds.png", label_map=CITYSCAPES_LABEL_ID_TO_TRAIN_ID
    )
    assert raw[0].semantic[0].tolist() == [0, 1, 2, 255, 13, 18]
    sub = CityscapesDataset(root=cityscapes, classes=("car", "road"))
    assert sub.metainfo.classes == ("car", "road") and sub.metainfo.palette == ((0, 0, 142), (128, 64, 128))
    assert sub[0].semantic[0].tolist() == [1, 255, 255, 255, 0, 255]
    with pytest.raises(DataError, match="not in the dataset's classes"):
        CityscapesDataset(root=cityscapes, classes=("road", "tree"))


def test_cityscapes_explicit_folders_and_missing_root(cityscapes: Path) -> None:
    ds = CityscapesDataset(cityscapes / "leftImg8bit" / "val", cityscapes / "gtFine" / "val")
    assert len(ds) == 1
    with pytest.raises(DataError, match=r"CityscapesDataset\.img_dir: give either 'root'"):
        CityscapesDataset()


def test_ade20k_reduce_zero_label_and_subset(tmp_path: Path) -> None:
    for subset, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _image(tmp_path / "images" / subset / f"{stem}.jpg", 2, 3)
        _label(tmp_path / "annotations" / subset / f"{stem}.png", [[0, 1, 150], [255, 4, 2]])
    ds = ADE20KDataset(root=tmp_path)
    assert len(ds) == 1 and ds.metainfo.num_classes == 150 and ds.metainfo.classes[0] == "wall"
    assert ds[0].semantic.tolist() == [[255, 0, 149], [255, 3, 1]]
    assert ds[0].meta.extra["reduce_zero_label"] is True
    # reduce_zero_label runs before the subset's label map: stored 1 (wall) -> 0 -> its new index 1.
    sub = ADE20KDataset(root=tmp_path, subset="validation", classes=("floor", "wall"))
    assert sub[0].semantic.tolist() == [[255, 1, 255], [255, 0, 255]]
    relative = ADE20KDataset("images/validation", "annotations/validation", root=tmp_path)
    assert relative.items[0][0].name == "ADE_val_00000001.jpg"


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    sets = tmp_path / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for stem in ("2007_000032", "2007_000039", "2008_000002"):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg", 2, 2)
    for stem in ("2007_000032", "2007_000039"):
        _label(tmp_path / "SegmentationClass" / f"{stem}.png", [[0, 15], [255, 20]], palette_png=True)
    for stem in ("2007_000032", "2008_000002"):
        _label(tmp_path / "SegmentationClassAug" / f"{stem}.png", [[1, 1], [0, 0]])
    (sets / "train.txt").write_text("2007_000032\n")
    (sets / "val.txt").write_text("2007_000039\n\n")
    (sets / "aug.txt").write_text("2008_000002\n2007_000032\n")
    return tmp_path


def test_voc_split_files(voc: Path) -> None:
    train, val = VOCDataset(root=voc), VOCDataset(root=voc, subset="val")
    assert [len(train), len(val)] == [1, 1] and val.items[0][0].name == "2007_000039.jpg"
    assert train.metainfo.num_classes == 21 and train.metainfo.palette[15] == (192, 128, 128)
    assert train[0].semantic.tolist() == [[0, 15], [255, 20]]  # palette PNG -> indices


def test_voc_aug_joins_split_lists_with_their_label_folders(voc: Path) -> None:
    aug = VOCDataset(root=voc, subset="aug")
    got = [(img.stem, seg.parent.name) for img, seg in aug.items]
    assert got == [
        ("2007_000032", "SegmentationClass"),
        ("2008_000002", "SegmentationClassAug"),
        ("2007_000032", "SegmentationClassAug"),  # kept twice, as MMSeg's ConcatDataset does
    ]
    assert aug[1].semantic.tolist() == [[1, 1], [0, 0]]
    sets = voc / "ImageSets" / "Segmentation"
    one_dir = VOCDataset(
        voc / "JPEGImages", voc / "SegmentationClass", split=[sets / "train.txt", sets / "val.txt"]
    )
    assert [img.stem for img, _ in one_dir.items] == ["2007_000032", "2007_000039"]
    with pytest.raises(DataError, match="3 folders for 2 split files"):
        VOCDataset(root=voc, subset="aug", ann_dir=["a", "b", "c"])
    with pytest.raises(DataError, match=r"split: .*test\.txt not found"):
        VOCDataset(root=voc, subset="test")
    (sets / "val.txt").write_text("2007_000039\nmissing_one\n")
    with pytest.raises(DataError) as err:
        VOCDataset(root=voc, subset="val")
    # One stem, counted once; the split file that lists it and both missing files are named.
    assert str(err.value) == (
        f"VOCDataset.split: the split file {sets / 'val.txt'} lists 1 stem (of 2) whose files are "
        f"missing, first 'missing_one': image {voc / 'JPEGImages/missing_one.jpg'} and label "
        f"{voc / 'SegmentationClass/missing_one.png'} not found; check img_dir, ann_dir and the suffixes"
    )


def test_voc_errors_name_the_split_file_at_fault(voc: Path) -> None:
    sets = voc / "ImageSets" / "Segmentation"
    # aug joins two split lists: the message says which one lists the stem whose label is missing.
    (sets / "aug.txt").write_text("2008_000002\n2007_000039\n")
    with pytest.raises(
        DataError, match=r"the split file .*aug\.txt lists 1 stem \(of 2\) .*'2007_000039': label "
    ):
        VOCDataset(root=voc, subset="aug")
    # An empty split file is named as such, not blamed on the image folder.
    (sets / "val.txt").write_text("\n")
    with pytest.raises(DataError) as err:
        VOCDataset(root=voc, subset="val")
    msg = str(err.value)
    assert msg.startswith(f"VOCDataset.split: the split file {sets / 'val.txt'} lists no stem (it is empty)")
    assert "holds no file" not in msg


def test_config_root_reaches_named_datasets(cityscapes: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"dataset:\n  root: {cityscapes}\n  train: {{type: CityscapesDataset, subset: train}}\n"
        "  val: {type: CityscapesDataset, subset: val, classes: [road, car]}\n"
    )
    rc = resolve(cfg)
    assert len(build_dataset(rc, "train")) == 2
    assert build_dataset(rc, "val").metainfo.num_classes == 2
