"""Each problem is one row: the config row that stops the model from building is the error and the
model rows say they were skipped because of it; a sample that does not load is named where it fails."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.doctor import DoctorContext
from masklab.doctor.context import Unavailable
from masklab.doctor.registry import all_checks
from masklab.doctor.report import summary
from masklab.doctor.runner import run_checks

Ctx = Callable[..., DoctorContext]

M2F = (
    Path(__file__).resolve().parents[2]
    / "configs"
    / "mask2former"
    / "mask2former_regnetx002_1xb8-2200i_synthetic-128x128.yaml"
)


def _run(ctx: DoctorContext, *families: str) -> dict[str, list]:
    found = run_checks(ctx, [c for c in all_checks() if c.family in families])
    rows: dict[str, list] = {}
    for f in found:
        rows.setdefault(f.check, []).append(f)
    return rows


@pytest.mark.parametrize(
    ("attributes", "needle"),
    [
        ("[{name: pattern, num_values: 3}, {name: color, num_values: 4}]", "in another order"),
        (
            "[{name: color, num_values: 3}, {name: pattern, num_values: 3}]",
            "color has 3 values in the config, 4",
        ),
    ],
)
def test_attribute_mismatch_is_one_config_error(
    synth_root: Path, make_ctx: Ctx, attributes: str, needle: str
) -> None:
    ctx = make_ctx(synth_root, f"model.attributes={attributes}", config=M2F)
    rows = _run(ctx, "config", "model")
    (attr,) = rows["config.attributes"]
    assert attr.status == "error" and needle in attr.evidence and "[color:4, pattern:3]" in attr.evidence
    assert "remove model.attributes" in attr.advice
    errors = [f for fs in rows.values() for f in fs if f.status == "error"]
    assert errors == [attr]
    model_rows = [f for name, fs in rows.items() if name.startswith("model.") for f in fs]
    assert len(model_rows) == 4
    assert all(f.status == "skip" and "config.attributes" in f.evidence for f in model_rows)
    assert all("config declares" not in f.evidence for f in model_rows)
    assert summary([f for fs in rows.values() for f in fs]).startswith("doctor: 1 errors")
    assert "4 skipped" in summary(model_rows + errors)


def test_matching_attributes_are_ok(synth_root: Path, make_ctx: Ctx) -> None:
    from masklab.doctor.checks.config import check_attributes

    (f,) = check_attributes(make_ctx(synth_root, config=M2F))
    assert f.status == "ok" and "[color:4, pattern:3]" in f.evidence


def test_topk_conflict_is_an_error_advising_to_remove_the_key(synth_root: Path, make_ctx: Ctx) -> None:
    ctx = make_ctx(synth_root, "model.test_topk=5", config=M2F)
    rows = _run(ctx, "config", "model")
    (topk,) = rows["config.max_dets"]
    assert topk.status == "error" and "model.test_topk=5" in topk.evidence and "max_dets=20" in topk.evidence
    assert "remove model.test_topk" in topk.advice and "derived from evaluate.max_dets" in topk.advice
    model_rows = [f for name, fs in rows.items() if name.startswith("model.") for f in fs]
    assert model_rows and all(f.status == "skip" and "config.max_dets" in f.evidence for f in model_rows)


def test_a_head_num_classes_mismatch_is_one_config_error(synth_root: Path, make_ctx: Ctx) -> None:
    """The head's build error reads "...num_classes: config says 5 but the model derives 7 (...); remove the
    key, ...": its "; " is not a second error, so the model rows skip naming config.num_classes
    (they reported "cannot build the model" a second time)."""
    ctx = make_ctx(synth_root, "model.decode_head.num_classes=5", steps=1)
    rows = _run(ctx, "config", "model")
    errors = [f for fs in rows.values() for f in fs if f.status == "error"]
    assert [f.check for f in errors] == ["config.num_classes"]
    model_rows = [f for name, fs in rows.items() if name.startswith("model.") for f in fs]
    assert len(model_rows) == 4
    assert all(f.status == "skip" and "config.num_classes" in f.evidence for f in model_rows)


def _corrupt_first_rle(root: Path) -> int:
    path = root / "annotations" / "train.json"
    data = json.loads(path.read_text())
    first_image = data["images"][0]["id"]
    ann = next(a for a in data["annotations"] if a["image_id"] == first_image)
    ann["segmentation"] = {"size": ann["segmentation"]["size"], "counts": "!!!!zz"}
    path.write_text(json.dumps(data))
    return ann["id"]


def test_corrupt_rle_is_a_data_error_when_the_dataset_is_built(data_copy: Path, make_ctx: Ctx) -> None:
    aid = _corrupt_first_rle(data_copy)
    ctx = make_ctx(data_copy, config=M2F)
    rows = _run(ctx, "data", "transforms", "model")
    (rle,) = rows["data.coco[train].rle"]
    assert rle.status == "error" and f"annotation id={aid}" in rle.evidence and "'!!!!zz'" in rle.evidence
    # The loader refuses the file when the dataset is built (it used to crash at the first sample),
    # one line naming the annotation and the field.
    loader_says = f"annotation id={aid}: field 'segmentation.counts' is not a valid compressed RLE"
    with pytest.raises(Unavailable, match=re.escape(loader_says)):
        ctx.dataset("train")
    # That is the problem the COCO row reports: every row that needs the dataset is skipped naming it.
    needing = [f for name, fs in rows.items() if not name.startswith("data.coco") for f in fs]
    assert {f.check for f in needing} >= {"data.labels[train]", "transforms.train_pipeline", "model.overfit"}
    assert all(
        f.status == "skip" and "dataset.train cannot be built (see data.coco[train].rle)" in f.evidence
        for f in needing
    ), needing


# ----------------------------------------------------------- one data problem, one row
def _folder(root: Path, which: str, **extra: str) -> str:
    """A FolderSegDataset node over the synthetic ``which`` split with its classes (extra keys appended)."""
    classes = json.loads((root / "meta.json").read_text())["classes"]
    keys = {
        "img_dir": root / "images" / which,
        "ann_dir": root / "labels" / which,
        "img_suffix": ".png",
        "classes": "[" + ", ".join(classes) + "]",
        **extra,
    }
    return "{type: FolderSegDataset, " + ", ".join(f"{k}: {v}" for k, v in keys.items()) + "}"


def _needing_train(rows: dict[str, list]) -> list:
    """Rows that need dataset.train: the transforms and model rows."""
    return [f for name, fs in rows.items() if name.startswith(("transforms.", "model.")) for f in fs]


def test_val_classes_in_another_order_are_an_error_row(synth_root: Path, make_ctx: Ctx) -> None:
    """Training refuses train/val class lists that disagree; the doctor reports it before the run."""
    classes = json.loads((synth_root / "meta.json").read_text())["classes"]
    swapped = [classes[0], classes[2], classes[1], *classes[3:]]
    val = _folder(synth_root, "val", classes="[" + ", ".join(swapped) + "]")
    ctx = make_ctx(synth_root, f"dataset.train={_folder(synth_root, 'train')}", f"dataset.val={val}")
    (row,) = _run(ctx, "data")["data.split_meta[val]"]
    assert row.status == "error"
    assert (
        f"dataset.train (FolderSegDataset 'classes' argument) and dataset.val (FolderSegDataset 'classes' "
        f"argument) disagree on their labels: label 1 is '{classes[1]}' in train" in row.evidence
    )
    assert "dataset.val" in row.advice and "same order" in row.advice
    same = make_ctx(
        synth_root,
        f"dataset.train={_folder(synth_root, 'train')}",
        f"dataset.val={_folder(synth_root, 'val')}",
    )
    assert [f.status for f in _run(same, "data")["data.split_meta[val]"]] == ["ok"]


def _break_label(root: Path, how: str) -> Path:
    path = root / "labels" / "train" / "000000.png"
    arr = np.array(Image.open(path))
    if how == "value":
        arr[0, :3] = 9  # 7 classes: 9 is neither a class nor ignore
        Image.fromarray(arr).save(path)
    elif how == "rgb":
        Image.fromarray(np.stack([arr] * 3, -1)).save(path)
    else:
        Image.fromarray(arr[:40]).save(path)
    return path


@pytest.mark.parametrize(
    ("how", "row"),
    [("value", "data.labels[train]"), ("rgb", "data.labels[train]"), ("size", "data.images[train]")],
)
def test_a_bad_label_file_is_one_error_row(data_copy: Path, make_ctx: Ctx, how: str, row: str) -> None:
    """The data row reports the file; the pipeline and model rows, whose first sample does not load
    because of it, are skipped naming that row (no "a transform moves masks apart" advice)."""
    bad = _break_label(data_copy, how)
    rows = _run(make_ctx(data_copy), "data", "transforms", "model")
    errors = [f for fs in rows.values() for f in fs if f.status == "error"]
    assert [f.check for f in errors] == [row] and str(bad) in errors[0].evidence
    needing = _needing_train(rows)
    assert {f.check for f in needing} >= {"transforms.train_pipeline", "model.finite_loss", "model.overfit"}
    assert all(f.status == "skip" and f"(see {row})" in f.evidence for f in needing), needing
    (pipeline,) = rows["transforms.train_pipeline"]
    assert pipeline.evidence.startswith(f"skipped: 1 of 2 samples do not load (see {row}); the other 1: ")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            {"split": "000000\nmissing_one\n"},
            "lists 1 stem (of 2) whose files are missing, first 'missing_one'",
        ),
        ({"split": "\n"}, "lists no stem (it is empty)"),
        ({"label_map": "{1: 9}"}, "FolderSegDataset.label_map: {1: 9} maps stored value 1 to 9"),
        ({"seg_map_suffix": ".jpg"}, "FolderSegDataset.seg_map_suffix: label maps are JPEG files"),
    ],
    ids=["missing_file", "empty_split", "label_map", "jpeg_labels"],
)
def test_a_dataset_that_does_not_build_is_one_error_row(
    data_copy: Path, make_ctx: Ctx, extra: dict[str, str], needle: str
) -> None:
    extra = dict(extra)
    if "split" in extra:  # the split file's lines
        (data_copy / "train.txt").write_text(extra["split"])
        extra["split"] = str(data_copy / "train.txt")
    if extra.get("seg_map_suffix") == ".jpg":
        for png in (data_copy / "labels" / "train").glob("*.png"):
            Image.open(png).save(png.with_suffix(".jpg"), quality=75)
    train = _folder(data_copy, "train", **extra)
    ctx = make_ctx(data_copy, f"dataset.train={train}", f"dataset.val={_folder(data_copy, 'val')}")
    rows = _run(ctx, "data", "transforms", "model")
    errors = [f for fs in rows.values() for f in fs if f.status == "error"]
    assert [f.check for f in errors] == ["data.labels[train]"], errors
    assert errors[0].evidence.startswith("dataset.train cannot be built: ") and needle in errors[0].evidence
    needing = _needing_train(rows) + rows["data.split_meta[val]"]
    assert len(needing) == 6 and all(
        f.status == "skip" and "dataset.train cannot be built (see data.labels[train])" in f.evidence
        for f in needing
    ), needing


def test_a_sample_no_data_row_read_is_a_data_error_of_the_pipeline_row(
    data_copy: Path, make_ctx: Ctx
) -> None:
    """With --max-files 1 the data rows do not read the second label map: the pipeline row meets it,
    reports it as a file that does not load (not as a transform), and the model rows name that row."""
    bad = data_copy / "labels" / "train" / "000001.png"
    arr = np.array(Image.open(bad))
    arr[0, :3] = 9
    Image.fromarray(arr).save(bad)
    ctx = make_ctx(data_copy)
    ctx.max_files = 1
    rows = _run(ctx, "data", "transforms", "model")
    errors = [f for fs in rows.values() for f in fs if f.status == "error"]
    assert [f.check for f in errors] == ["transforms.train_pipeline"]
    assert (
        errors[0].evidence.startswith("1 of 2 samples do not load, first: ")
        and str(bad) in errors[0].evidence
    )
    assert "not a transform one" in errors[0].advice
    model_rows = [f for name, fs in rows.items() if name.startswith("model.") for f in fs]
    assert model_rows and all(
        f.status == "skip" and "(see transforms.train_pipeline)" in f.evidence for f in model_rows
    )
