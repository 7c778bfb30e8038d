"""MAL through the CLI: train -> infer --boxes -> evaluate in-process, and bad box files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "mal" / "mal_tiny_synthetic-64.yaml")
TINY = [
    "dataset.crop_size=32",
    "model.mask_head_hidden_channel=8",
    "model.mask_head_out_channel=8",
    "model.mask_head_num_convs=2",
    "train.crf_num_iter=2",
    "train.batch_size=2",
    "train.log_interval=1",
]


def _data(root: Path) -> list[str]:
    return [
        f"dataset.train_ann_path={root}/annotations/train.json",
        f"dataset.train_img_dir={root}/images/train",
        f"dataset.val_ann_path={root}/annotations/val.json",
        f"dataset.val_img_dir={root}/images/val",
    ]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny MAL checkpoint (weights only): enough to label."""
    from masklab.config.assemble import resolve
    from masklab.models.mal.build import build_mal_model

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": build_mal_model(resolve(CONFIG, TINY)).state_dict()}, path)
    return path


def _boxes(tmp_path: Path, tiny_synth: Path, edit=None) -> Path:
    raw = json.loads((tiny_synth / "annotations" / "val.json").read_text())
    for i, ann in enumerate(raw["annotations"]):
        ann.pop("segmentation", None)
        ann["score"] = 0.5 + 0.01 * i
    if edit is not None:
        edit(raw)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(raw))
    return path


def _infer(tiny_synth: Path, ckpt: Path, boxes: Path, out: Path, *extra: str) -> int:
    return main(["infer", CONFIG, str(ckpt), *TINY, "--boxes", str(boxes),
                 "--images", str(tiny_synth / "images" / "val"), "--out", str(out), *extra])  # fmt: skip


def test_infer_keeps_every_box_and_score(tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    boxes = _boxes(tmp_path, tiny_synth)
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, boxes, out, "--vis") == 0
    src, got = json.loads(boxes.read_text()), json.loads(out.read_text())
    assert [a["id"] for a in got["annotations"]] == [a["id"] for a in src["annotations"]]
    coco = COCO(str(out))  # loads in pycocotools
    for a, b in zip(src["annotations"], got["annotations"], strict=True):
        assert b["bbox"] == a["bbox"] and b["score"] == a["score"]
        m = coco.annToMask(coco.anns[b["id"]])
        assert b["area"] == float(m.sum()) == float(mask_utils.area(b["segmentation"]))
    assert any((tmp_path / "labels_vis").iterdir())


def _zero(raw):
    raw["annotations"][0]["bbox"] = [3, 3, 0, 5]


def _outside(raw):
    raw["annotations"][0]["bbox"] = [500, 500, 10, 10]


def _category(raw):
    raw["annotations"][0]["category_id"] = 999


def _image(raw):
    raw["images"][0]["file_name"] = "nope.png"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_zero, "expected positive width and height"),
        (_outside, "outside its"),
        (_category, "not among the categories"),
        (_image, "not found"),
    ],
)
def test_bad_boxes_are_one_line_errors_and_no_output(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, message: str
) -> None:
    boxes = _boxes(tmp_path, tiny_synth, edit)
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, boxes, out) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_infer_boxes_under_torchrun_is_one_line(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, _boxes(tmp_path, tiny_synth), out) != 0
    err = capsys.readouterr().err.strip()
    assert "runs in one process; start it without torchrun" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_train_infer_evaluate_round_trip(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    common = [*TINY, *_data(tiny_synth), "dataset.min_obj_size=4"]
    run = ["train", CONFIG, "--work-dir", str(work), "--no-progress", *common,
           "train.checkpoint_interval_unit=step", "train.checkpoint_interval=2", "train.validation_interval=100"]  # fmt: skip
    assert main([*run, "train.max_iters=3"]) == 0
    ckpt = work / "checkpoints" / (work / "checkpoints" / "latest").read_text().strip()
    # Auto-resume: a second call with more iterations continues from the latest checkpoint.
    assert main([*run, "train.max_iters=4"]) == 0
    assert (work / "checkpoints" / "iter_0000004.pth").is_file()
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, ckpt, _boxes(tmp_path, tiny_synth), out) == 0
    metrics = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", CONFIG, str(ckpt), *common, "--out", str(metrics), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mask_iou" in printed and printed.count("size buckets by GT area") == 1
    got = json.loads(metrics.read_text())["metrics"]
    assert 0.0 <= got["mask_iou"] <= 1.0 and "segm/AP" in got and got["missing"] == 0
