"""The dataset base configs build their datasets on tiny hand-made trees in the official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from masklab.config.assemble import build_dataset, resolve
from masklab.data.datasets.cityscapes import CITYSCAPES_LABEL_ID_TO_TRAIN_ID

BASES = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "datasets"


def _image(path: Path, h: int = 4, w: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def _config(tmp_path: Path, *bases: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("_base_:\n" + "".join(f"  - {BASES / b}\n" for b in bases))
    return cfg


def test_voc12aug_base_reads_train_plus_aug_and_val(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    splits = root / "ImageSets" / "Segmentation"
    for stem in ("2007_000032", "2007_000033", "2008_000002"):
        _image(root / "JPEGImages" / f"{stem}.jpg")
    _label(root / "SegmentationClass" / "2007_000032.png", np.full((4, 6), 1))
    _label(root / "SegmentationClass" / "2007_000033.png", np.full((4, 6), 2))
    _label(root / "SegmentationClassAug" / "2008_000002.png", np.full((4, 6), 15))
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("2007_000032\n")
    (splits / "aug.txt").write_text("2008_000002\n")
    (splits / "val.txt").write_text("2007_000033\n")
    rc = resolve(_config(tmp_path, "voc12aug.yaml"), [f"dataset.root={root}"])
    train, val = build_dataset(rc, "train"), build_dataset(rc, "val")
    labels = [str(seg.relative_to(root)) for _, seg in train.items]
    assert labels == ["SegmentationClass/2007_000032.png", "SegmentationClassAug/2008_000002.png"]
    assert [str(seg.relative_to(root)) for _, seg in val.items] == ["SegmentationClass/2007_000033.png"]
    assert train.load_sample(1).semantic.unique().tolist() == [15]  # person, from the SBD mask


def test_cityscapes_label_ids_base_maps_raw_ids_to_train_ids(tmp_path: Path) -> None:
    root = tmp_path / "cityscapes"
    raw = np.array([[0, 7, 8, 11, 26, 33]] * 4)
    for split in ("train", "val"):
        stem = f"aachen/aachen_000000_00001{'9' if split == 'train' else '8'}"
        _image(root / "leftImg8bit" / split / f"{stem}_leftImg8bit.png")
        _label(root / "gtFine" / split / f"{stem}_gtFine_labelIds.png", raw)
    cfg = _config(tmp_path, "cityscapes.yaml", "cityscapes_label_ids.yaml")
    rc = resolve(cfg, [f"dataset.root={root}"])
    for split in ("train", "val"):
        ds = build_dataset(rc, split)
        assert ds.label_map == CITYSCAPES_LABEL_ID_TO_TRAIN_ID and len(ds) == 1
        assert ds.load_sample(0).semantic[0].tolist() == [255, 0, 1, 2, 13, 18]
