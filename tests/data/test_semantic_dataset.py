from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.config.registries import DATASETS
from masklab.data.datasets.semantic import FolderSegDataset, SyntheticSemanticDataset, label_lut
from masklab.data.meta import DatasetMeta
from masklab.errors import DataError


def _write(root: Path, stem: str, label: np.ndarray, suffix: str = ".png") -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ann").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(root / "img" / f"{stem}{suffix}")
    Image.fromarray(label.astype(np.uint8)).save(root / "ann" / f"{stem}.png")


def test_synthetic_semantic_dataset(synth_root: Path) -> None:
    ds = SyntheticSemanticDataset(synth_root, "val")
    assert len(ds) == 8 and DATASETS.get("SyntheticSemanticDataset") is SyntheticSemanticDataset
    assert ds.metainfo.num_classes == 7 and ds.metainfo.attribute("color").num_values == 4
    s = ds[3]
    assert s.image.shape == (3, 96, 96) and s.semantic.dtype == torch.int64
    assert Path(s.meta.extra["seg_map_path"]).name == "000003.png"
    assert s.meta.ori_shape == (96, 96) and int(s.semantic.max()) < 7
    with pytest.raises(DataError, match="masklab data synth"):
        SyntheticSemanticDataset(synth_root / "missing")


def test_label_out_of_range_names_file_and_value(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.array([[0, 1], [255, 7]]))
    ds = FolderSegDataset(tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("bg", "fg"))
    with pytest.raises(DataError, match=r"a\.png: label value 7 is outside \[0, 2\)"):
        ds[0]


def test_ignore_reduce_zero_and_split(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.array([[0, 1], [255, 2]]))
    _write(tmp_path, "b", np.array([[1, 1], [1, 1]]))
    (tmp_path / "split.txt").write_text("b\n\n")
    ds = FolderSegDataset(
        tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("x", "y"), reduce_zero_label=True
    )
    assert len(ds) == 2
    assert ds[0].semantic.tolist() == [[255, 0], [255, 1]]
    only_b = FolderSegDataset(
        tmp_path / "img",
        tmp_path / "ann",
        img_suffix=".png",
        classes=("x", "y"),
        split=tmp_path / "split.txt",
    )
    assert len(only_b) == 1 and only_b[0].meta.file_name.endswith("b.png")


def test_class_subset_of_builtin_meta(tmp_path: Path) -> None:
    class Tiny(FolderSegDataset):
        METAINFO = DatasetMeta(classes=("a", "b", "c"))

    _write(tmp_path, "a", np.array([[0, 1], [2, 255]]))
    ds = Tiny(tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("c", "a"))
    assert ds.metainfo.classes == ("c", "a")
    assert ds[0].semantic.tolist() == [[1, 255], [0, 255]]
    with pytest.raises(DataError, match="'zzz'"):
        Tiny(tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("zzz",))


def test_reduce_zero_runs_before_label_map() -> None:
    lut = label_lut(True, {0: 5})
    assert lut[1] == 5 and lut[0] == 255 and lut[2] == 1 and lut[255] == 255


def test_missing_label_file_and_pipeline(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.array([[0, 1]]))
    calls = []

    def mark(sample):
        calls.append(sample.meta.image_id)
        return sample

    ds = FolderSegDataset(
        tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("x", "y"), pipeline=[mark]
    )
    ds[0]
    assert calls == [0]
    (tmp_path / "ann" / "a.png").unlink()
    with pytest.raises(
        DataError,
        match=r"^FolderSegDataset\.ann_dir: 1 of 1 images .* have no label map, first: .*a\.png expects .*ann/a\.png",
    ):
        FolderSegDataset(tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("x", "y"))


def test_empty_dataset_names_folder_suffix_and_split(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.array([[0, 1]]), suffix=".png")
    with pytest.raises(DataError) as err:
        FolderSegDataset(tmp_path / "img", tmp_path / "ann", classes=("x", "y"))  # default suffix .jpg
    assert str(err.value) == (
        f"FolderSegDataset.img_dir: no image found: {tmp_path / 'img'} holds no file ending in '.jpg' and "
        "no split file (every image is used); check img_dir, img_suffix and split"
    )
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(
        DataError, match=r"^FolderSegDataset\.split: the split file .*empty\.txt lists no stem"
    ):
        FolderSegDataset(
            tmp_path / "img",
            tmp_path / "ann",
            img_suffix=".png",
            classes=("x",),
            split=tmp_path / "empty.txt",
        )


def test_palette_length_names_the_argument(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.array([[0, 1]]))
    with pytest.raises(
        DataError,
        match=r"^FolderSegDataset\.palette: 1 colours for 3 classes; expected one RGB triple of ints 0-255 per class \(3 classes\)$",
    ):
        FolderSegDataset(
            tmp_path / "img",
            tmp_path / "ann",
            img_suffix=".png",
            classes=("a", "b", "c"),
            palette=[[1, 2, 3]],
        )


def test_meta_json_errors_name_the_file(synth_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(synth_root, root)
    meta = root / "meta.json"
    meta.write_text('{"classes": ["a", "b"], "palette": [[0, 0, 0]]}')
    with pytest.raises(DataError, match=r"meta\.json: palette has 1 colours for 2 classes"):
        SyntheticSemanticDataset(root)
    meta.write_text('{"classes": ["a", "b')
    with pytest.raises(DataError) as err:
        SyntheticSemanticDataset(root)
    assert "at at" not in str(err.value) and "line 1, column" in str(err.value)


def test_duplicate_names_in_meta_raise() -> None:
    from masklab.data.meta import AttributeMeta

    with pytest.raises(DataError, match="class 'a' is listed twice"):
        DatasetMeta(classes=("a", "b", "a"))
    with pytest.raises(DataError, match="attribute 'color' lists value 'red' twice"):
        DatasetMeta(classes=("a",), attributes=(AttributeMeta("color", ("red", "red")),))


def test_missing_listed_stem_is_counted_once_naming_the_split_file(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.array([[0, 1]]), suffix=".png")
    (tmp_path / "split.txt").write_text("a\ns9\n")
    with pytest.raises(DataError) as err:
        FolderSegDataset(
            tmp_path / "img",
            tmp_path / "ann",
            img_suffix=".png",
            classes=("x", "y"),
            split=tmp_path / "split.txt",
        )
    assert str(err.value) == (
        f"FolderSegDataset.split: the split file {tmp_path / 'split.txt'} lists 1 stem (of 2) whose files "
        f"are missing, first 's9': image {tmp_path / 'img/s9.png'} and label {tmp_path / 'ann/s9.png'} not "
        "found; check img_dir, ann_dir and the suffixes"
    )


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".webp"])
def test_lossy_label_maps_are_refused(tmp_path: Path, suffix: str) -> None:
    """JPEG (and lossy WebP) labels: compression noise would become wrong labels and phantom classes."""
    label = np.zeros((32, 32), np.uint8)
    label[8:24, 8:24] = 2
    _write(tmp_path, "a", label, suffix=".png")
    (tmp_path / "ann" / "a.png").unlink()
    Image.fromarray(label).save(tmp_path / "ann" / f"a{suffix}", quality=75)
    with pytest.raises(DataError) as err:
        FolderSegDataset(
            tmp_path / "img",
            tmp_path / "ann",
            img_suffix=".png",
            seg_map_suffix=suffix,
            classes=("x", "y", "z"),
        )
    msg = str(err.value)
    assert msg.startswith("FolderSegDataset.seg_map_suffix: label maps are ")
    assert str(tmp_path / "ann" / f"a{suffix}") in msg and "lossless single-channel index PNGs" in msg


def test_lossless_webp_labels_are_accepted(tmp_path: Path) -> None:
    label = np.array([[0, 1], [2, 1]], np.uint8)
    _write(tmp_path, "a", label, suffix=".png")
    Image.fromarray(label).save(tmp_path / "ann" / "a.webp", lossless=True)
    ds = FolderSegDataset(
        tmp_path / "img", tmp_path / "ann", img_suffix=".png", seg_map_suffix=".webp", classes=("x", "y", "z")
    )
    assert len(ds) == 1


@pytest.mark.parametrize(
    ("label_map", "needle"),
    [
        ({1: 7}, "maps stored value 1 to 7, outside [0, 2) and not ignore_index 255"),
        ({300: 1}, "maps stored value 300, which an 8-bit label map cannot hold"),
    ],
)
def test_label_map_is_checked_before_any_file(tmp_path: Path, label_map: dict, needle: str) -> None:
    """A wrong ``label_map`` names the argument, not the first label file holding the stored value."""
    _write(tmp_path, "a", np.array([[0, 1]]), suffix=".png")
    with pytest.raises(DataError) as err:
        FolderSegDataset(
            tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("x", "y"), label_map=label_map
        )
    assert str(err.value).startswith("FolderSegDataset.label_map: ") and needle in str(err.value)
    assert "a.png" not in str(err.value)
    ok = FolderSegDataset(
        tmp_path / "img", tmp_path / "ann", img_suffix=".png", classes=("x", "y"), label_map={1: 255}
    )
    assert ok[0].semantic.tolist() == [[0, 255]]
