"""Log curves and confusion-matrix figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.data.meta import AttributeMeta, DatasetMeta
from masklab.errors import DataError
from masklab.structures import Instances, Sample, SampleMeta
from masklab.visualization.plots import (
    extract_series,
    plot_confusion_matrix,
    plot_curves,
    read_log,
    row_normalize,
)
from masklab.visualization.sample_view import instance_label, render_sample


def _log(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_read_log_keeps_the_resumed_record(tmp_path: Path) -> None:
    log = _log(
        tmp_path / "log.jsonl",
        [
            {"mode": "train", "iteration": 1, "loss": 3.0},
            {"mode": "train", "iteration": 2, "loss": 2.0},
            {"mode": "val", "iteration": 2, "mIoU": 0.1},
            {"mode": "train", "iteration": 2, "loss": 1.5},  # written again after a resume
            {"mode": "train", "iteration": 3, "loss": float("nan")},
        ],
    )
    series = extract_series(read_log(log), ["loss", "mIoU"])
    loss, miou = series
    assert (loss.mode, loss.iterations, loss.values) == ("train", [1, 2], [3.0, 1.5])  # NaN dropped
    assert (miou.mode, miou.iterations, miou.values) == ("val", [2], [0.1])
    with pytest.raises(DataError, match="no values for key 'acc'; logged keys: loss, mIoU"):
        extract_series(read_log(log), ["acc"])


def test_a_key_logged_only_as_nan_or_null_is_said_so_with_the_file(tmp_path: Path) -> None:
    from masklab import strict_json

    log = tmp_path / "log.jsonl"
    rows = [{"mode": "val", "iteration": 1, "mask_iou_large": float("nan"), "loss": 1.0}]
    log.write_text("".join(strict_json.dumps(r) + "\n" for r in rows))
    assert "NaN" not in log.read_text() and '"mask_iou_large": null' in log.read_text()
    with pytest.raises(
        DataError, match=r"log\.jsonl: key 'mask_iou_large' is logged but never with a finite"
    ):
        extract_series(read_log(log), ["mask_iou_large"], source=str(log))
    with pytest.raises(DataError, match="logged keys: loss$"):  # the NaN-only key is not offered
        extract_series(read_log(log), ["acc"])


def test_read_log_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "log.jsonl"
    bad.write_text('{"iteration": 1, "loss": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"log\.jsonl:2: not a JSON record"):
        read_log(bad)
    with pytest.raises(DataError, match="log file not found"):
        read_log(tmp_path / "nope.jsonl")


def test_plot_curves_and_confusion_write_pngs(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl", [{"iteration": i, "loss": 1 / i} for i in range(1, 5)])
    png = plot_curves(extract_series(read_log(log), ["loss"]), tmp_path / "c" / "curves.png", title="run")
    assert Image.open(png).size[0] > 100
    m = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 2]])
    assert row_normalize(m).tolist() == [[5 / 6, 1 / 6, 0], [0, 0, 0], [0.5, 0, 0.5]]
    png = plot_confusion_matrix(m, ["a", "b", "c"], tmp_path / "cm.png")
    assert Image.open(png).mode in ("RGBA", "RGB")


def test_a_failed_plot_write_keeps_the_old_file_and_leaves_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plots are written atomically (session 10: the confusion PNG was written in place)."""
    from matplotlib.figure import Figure

    m = np.array([[5, 1], [0, 2]])
    good = plot_confusion_matrix(m, ["a", "b"], tmp_path / "cm.png")
    before = good.read_bytes()

    def broken(self: Figure, fname: object, **kwargs: object) -> None:
        Path(str(fname)).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError):
        plot_confusion_matrix(m, ["a", "b"], tmp_path / "cm.png")
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]


def test_render_sample_draws_labels_instances_and_ignore() -> None:
    image = torch.zeros(3, 8, 10, dtype=torch.uint8)
    semantic = torch.full((8, 10), 255, dtype=torch.int64)
    semantic[:4] = 1
    masks = torch.zeros(1, 8, 10, dtype=torch.bool)
    masks[0, 5:7, 2:6] = True
    inst = Instances(
        masks, torch.tensor([[2.0, 5.0, 6.0, 7.0]]), torch.tensor([0]), {"color": torch.tensor([-1])}
    )
    meta = DatasetMeta(("cat", "dog"), ((255, 0, 0), (0, 0, 255)), (AttributeMeta("color", ("red",)),))
    sample = Sample(
        image=image, meta=SampleMeta(ori_shape=(8, 10), img_shape=(8, 10)), semantic=semantic, instances=inst
    )
    plain = render_sample(Sample(image=image, meta=sample.meta, semantic=semantic), meta, opacity=1.0)
    assert plain.shape == (8, 10 + 4 + 10, 3) and plain[:, :10].max() == 0  # left: the untouched image
    right = plain[:, 14:]
    assert right[0, 0].tolist() == [0, 0, 255]  # class 1 in its palette colour
    ignored = {tuple(v) for v in right[4:].reshape(-1, 3).tolist()}
    assert ignored == {(128, 128, 128), (0, 0, 0)}  # ignore: grey stripes over the image
    right = render_sample(sample, meta, opacity=1.0)[:, 14:]
    assert (right[5:7, 2:6] == [255, 0, 0]).all(-1).any()  # the instance in its class colour
    assert instance_label(inst, 0, meta) == "cat color=?"
