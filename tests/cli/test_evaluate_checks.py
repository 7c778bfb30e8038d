"""``masklab evaluate CFG CKPT``: what is checked before the evaluation runs. The checkpoint's class
list against the data's, every output path, and dataset errors naming ``dataset.val``; each failure
is one ``error:`` line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main

TINY = Path(__file__).with_name("configs") / "tiny_fcn.yaml"


def _checkpoint(root: Path, path: Path, classes: list[str] | None = None) -> Path:
    """Weights of the tiny model, with the class list training stores (``classes`` replaces it)."""
    from masklab.config.assemble import build_dataset, build_model, resolve
    from masklab.engine.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    rc = resolve(TINY, [f"dataset.root={root}"])
    meta = build_dataset(rc, "train").metainfo
    stored = meta.to_json()
    if classes is not None:
        stored["classes"] = classes
    model = build_model(rc, meta)
    return save_checkpoint(path, {"model": model.state_dict(), "iteration": 0, "dataset_meta": stored})


def _evaluate(root: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["evaluate", str(TINY), str(ckpt), f"dataset.root={root}", "--no-progress", *extra]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "summary" not in captured.out, "the evaluation ran before the error"
    return lines[0]


def test_a_checkpoint_trained_on_another_class_order_is_refused(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same number of classes in another order: the model builds and the weights load, so only the
    checkpoint's stored class list shows the per-class metrics would be misnamed."""
    classes = json.loads((tiny_synth / "meta.json").read_text())["classes"]
    swapped = [classes[1], classes[0], *classes[2:]]
    ckpt = _checkpoint(tiny_synth, tmp_path / "swapped.pth", swapped)
    out = tmp_path / "m.json"
    assert main(_evaluate(tiny_synth, ckpt, "--out", str(out))) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {ckpt}: the checkpoint was trained on classes {swapped} but dataset.val ")
    assert f"has {classes}: label 0 is '{classes[1]}' in the checkpoint" in line
    assert not out.exists()
    same = _checkpoint(tiny_synth, tmp_path / "same.pth")
    assert main(_evaluate(tiny_synth, same, "--out", str(out))) == 0
    assert json.loads(out.read_text())["checkpoint"] == str(same)


@pytest.mark.parametrize(
    ("out", "confusion", "needle"),
    [
        ("afile/m.json", "cm", "--out {tmp}/afile/m.json: {tmp}/afile is a file, where a folder is needed"),
        ("m.json", "afile/cm", "--confusion {tmp}/afile/cm: {tmp}/afile is a file, where a folder is needed"),
        ("m.json", "afile", "--confusion {tmp}/afile: is a file; expected a folder to write into"),
        ("cm", "cm", "--out {tmp}/cm: is a folder; expected a file path"),
    ],
    ids=["out_under_a_file", "confusion_under_a_file", "confusion_is_a_file", "out_is_a_folder"],
)
def test_every_output_is_checked_before_evaluating(
    tiny_synth: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    out: str,
    confusion: str,
    needle: str,
) -> None:
    ckpt = _checkpoint(tiny_synth, tmp_path / "w.pth")
    (tmp_path / "afile").write_text("not a folder")
    if out == "cm":
        (tmp_path / "cm").mkdir()
    argv = _evaluate(tiny_synth, ckpt, "--out", str(tmp_path / out), "--confusion", str(tmp_path / confusion))
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    assert needle.format(tmp=tmp_path) in _one_error_line(capsys)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even the other output


def test_dataset_errors_name_dataset_val_and_the_split_file(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tiny_synth, tmp_path / "w.pth")
    split = tmp_path / "val.txt"
    split.write_text("000000\nmissing_one\n")
    classes = json.loads((tiny_synth / "meta.json").read_text())["classes"]
    node = (
        f"{{type: FolderSegDataset, img_dir: {tiny_synth / 'images/val'}, ann_dir: {tiny_synth / 'labels/val'}, "
        f"img_suffix: .png, split: {split}, classes: [{', '.join(classes)}]}}"
    )
    assert main(_evaluate(tiny_synth, ckpt, f"dataset.val={node}", "--out", str(tmp_path / "m.json"))) == 2
    line = _one_error_line(capsys)
    assert line.startswith(
        f"error: dataset.val: FolderSegDataset.split: the split file {split} lists 1 stem (of 2) whose "
        "files are missing, first 'missing_one': image "
    )
    assert not (tmp_path / "m.json").exists()
