"""``masklab evaluate coco``: settings and the output path are checked before anything is evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masklab.cli.main import main


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """A one-image ground truth and a results file that finds its object."""
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "box"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0,
                         "area": 16, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
    }  # fmt: skip
    pred = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "score": 0.9}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    return tmp_path / "gt.json", tmp_path / "pred.json"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--out", "{tmp}"], "--out {tmp}: is a folder"),
        (["--max-dets", "10", "5"], "--max-dets 10 5: expected increasing positive integers"),
        (["--max-dets", "0"], "--max-dets 0: expected"),
    ],
)
def test_mistakes_are_one_line_before_the_report(
    tmp_path: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    gt, pred = _files(tmp_path)
    argv = ["evaluate", "coco", "--gt", str(gt), "--pred", str(pred), "--iou-type", "bbox"]
    code = main(argv + [e.format(tmp=tmp_path) for e in extra])
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle.format(tmp=tmp_path) in lines[0]
    assert captured.out == ""  # refused before evaluating: no report printed


def test_out_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, pred = _files(tmp_path)
    out = tmp_path / "sub" / "m.json"
    argv = ["evaluate", "coco", "--gt", str(gt), "--pred", str(pred), "--iou-type", "bbox", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())["AP"] == pytest.approx(1.0)
