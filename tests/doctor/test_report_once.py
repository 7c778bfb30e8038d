"""Each problem is one row: the config row that stops the model from building is the error and the
model rows say they were skipped because of it; a sample that does not load is named where it fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from masklab.doctor import DoctorContext
from masklab.doctor.registry import all_checks
from masklab.doctor.report import summary
from masklab.doctor.runner import run_checks

Ctx = Callable[..., DoctorContext]

M2F = (
    Path(__file__).resolve().parents[2]
    / "configs"
    / "mask2former"
    / "mask2former_regnetx002_1xb8-1600i_synthetic-128x128.yaml"
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
    # one line naming the annotation and the field; the rows that need the dataset say so.
    loader_says = f"annotation id={aid}: field 'segmentation.counts' is not a valid compressed RLE"
    (crash,) = rows["transforms.train_pipeline"]
    assert crash.status == "error" and "dataset.train cannot be built" in crash.evidence
    assert loader_says in crash.evidence
    model_rows = [f for name, fs in rows.items() if name.startswith("model.") for f in fs]
    assert model_rows and all(
        f.status == "skip" and "dataset.train cannot be built" in f.evidence for f in model_rows
    )
