"""analyze-logs, browse-dataset, benchmark and evaluate --confusion, in-process on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from masklab.cli.benchmark import count_flops, count_parameters
from masklab.cli.main import main
from masklab.data.collate import collate
from masklab.structures import Sample, SampleMeta

# A tiny GroupNorm FCN: builds in well under a second and runs a 32x32 forward in milliseconds.
TINY_CONFIG = """
model:
  type: EncoderDecoder
  data_preprocessor: {type: DataPreprocessor, size_divisor: 32}
  backbone: {type: TimmBackbone, model_name: test_efficientnet_gn, pretrained: false, out_indices: [4]}
  decode_head: {type: FCNHead, in_index: -1, channels: 32, num_convs: 1, concat_input: false, norm: gn}
dataset:
  root: data/synthetic
  train: {type: SyntheticSemanticDataset, split: train, pipeline: [{type: RandomFlip, prob: 0.5}]}
  val: {type: SyntheticSemanticDataset, split: val, pipeline: []}
evaluate: {mode: whole, metrics: [mIoU]}
runtime: {device: cpu, num_threads: 1}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def test_analyze_logs_plots_keys_of_a_work_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "run"
    work.mkdir()
    rows = [{"mode": "train", "iteration": i, "loss": 2.0 / i, "lr": 0.01} for i in (1, 2, 3)]
    rows.append({"mode": "val", "iteration": 3, "mIoU": 0.42})
    (work / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curves.png"
    assert main(["analyze-logs", str(work), "--keys", "loss", "mIoU", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train loss: 3 points, last 0.6667, best 0.6667" in text and "val mIoU: 1 points" in text
    assert Image.open(out).size[0] > 100
    assert main(["analyze-logs", str(work), "--keys", "acc"]) == 2
    assert "log.jsonl: no values for key 'acc'" in capsys.readouterr().err
    assert main(["analyze-logs", str(tmp_path / "nowhere")]) == 2


def test_analyze_logs_checks_out_and_names_runs_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --out matplotlib cannot write (a .txt, a folder) is one line before anything is read (a
    .txt was a ValueError traceback); runs whose folders share a name are named by their paths."""
    rows = [{"mode": "train", "iteration": i, "loss": 1.0 / i} for i in (1, 2)]
    for run in ("a/run", "b/run"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
    assert main(["analyze-logs", *logs, "--out", str(tmp_path / "curves.txt")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(
        f"error: --out {tmp_path / 'curves.txt'}: cannot write a .txt figure; use one of "
    )
    assert main(["analyze-logs", *logs, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {tmp_path}: is a folder; expected a file path such as {tmp_path / 'curves.png'}\n"
    )
    out = tmp_path / "curves.png"
    assert main(["analyze-logs", *logs, "--keys", "loss", "loss", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"{tmp_path / 'a' / 'run'} train loss: 2 points, last 0.5, best 0.5",
        f"{tmp_path / 'b' / 'run'} train loss: 2 points, last 0.5, best 0.5",
    ]
    assert len(lines) == 3 and out.is_file()


def test_browse_dataset_renders_the_train_pipeline(
    config: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "browse"
    args = ["browse-dataset", str(config), f"dataset.root={tiny_synth}", "--out", str(out), "--num", "2"]
    assert main(args) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["0000_000000.png", "0001_000001.png"]
    w, h = Image.open(files[0]).size
    assert (h, w) == (64, 64 * 2 + 4)  # image | gap | labelled image
    assert "64x64; classes: background" in capsys.readouterr().out
    assert main([*args, "--split", "test"]) == 2
    assert "dataset.test: missing" in capsys.readouterr().err


def test_browse_dataset_writes_nothing_when_a_sample_is_bad(
    config: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    bad = sorted((data / "labels" / "train").glob("*.png"))[1]
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(bad)  # class 77 of a 7-class dataset
    out = tmp_path / "browse"
    args = ["browse-dataset", str(config), f"dataset.root={data}", "--out", str(out), "--num", "2"]
    assert main(args) == 2
    assert "77" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # the good first sample was not written either


def test_browse_dataset_refuses_an_opacity_outside_0_1(
    config: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--opacity 3 was taken silently (colours blown out, clipped); now one line as infer says it."""
    out = tmp_path / "browse"
    args = ["browse-dataset", str(config), f"dataset.root={tiny_synth}", "--out", str(out), "--num", "1"]
    assert main([*args, "--opacity", "3"]) == 2
    assert capsys.readouterr().err == "error: browse-dataset --opacity: 3.0; expected a value in [0, 1]\n"
    assert not out.exists()


def test_benchmark_reports_params_flops_fps(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = [
        "benchmark",
        str(config),
        "--size",
        "32",
        "48",
        "--num-classes",
        "3",
        "--warmup",
        "1",
        "--runs",
        "3",
    ]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["input"] == [1, 3, 32, 48] and result["runs"] == 3
    assert result["params"]["total"] > 0 and result["flops"]["total"] > 0 and result["fps"] > 0
    assert "GMACs" in capsys.readouterr().out


def test_benchmark_checks_out_before_running(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark ran although --out cannot be written")

    monkeypatch.setattr("masklab.cli.benchmark.time_inference", never)
    args = ["benchmark", str(config), "--size", "32", "48", "--num-classes", "3", "--runs", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {tmp_path}: is a folder; expected a file path such as {tmp_path / 'benchmark.json'}\n"
    )
    (tmp_path / "file").write_text("")
    assert main([*args, "--out", str(tmp_path / "file" / "b.json")]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {tmp_path / 'file' / 'b.json'}: {tmp_path / 'file'} is a file, where a folder is needed\n"
    )


def test_benchmark_names_a_checkpoint_of_another_model(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from masklab.engine.checkpoint import save_checkpoint

    other = save_checkpoint(tmp_path / "other.pth", {"model": {"conv.weight": torch.zeros(1)}})
    args = ["benchmark", str(config), str(other), "--size", "32", "32", "--num-classes", "3"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"error: {other}: weights do not fit this model (")


def test_benchmark_size_too_small_for_the_model_is_one_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GroupNorm on the 1x1 stride-32 map of a 32x32 input: one value per group
    assert main(["benchmark", str(config), "--size", "32", "32", "--num-classes", "3", "--runs", "1"]) == 2
    assert capsys.readouterr().err == (
        "error: --size 32 32: too small for this model even padded to 32x32 (a normalisation layer saw "
        "a single value per channel); use a larger --size\n"
    )


def test_benchmark_takes_overrides_without_a_checkpoint(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CKPT is optional: `benchmark CFG key=value` applies the override (it was taken as a checkpoint
    path: `error: key=value: checkpoint file not found`)."""
    args = ["--size", "32", "48", "--num-classes", "3", "--warmup", "0", "--runs", "1", "--out"]
    assert main(["benchmark", str(config), *args, str(tmp_path / "a.json")]) == 0
    wide = ["model.decode_head.channels=64", *args, str(tmp_path / "b.json")]
    assert main(["benchmark", str(config), *wide]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["params"]["total"] for n in "ab")
    assert b > a
    capsys.readouterr()
    assert main(["benchmark", str(config), *args[:4], "-2", "--out", str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err == "error: benchmark --num-classes: expected a class count >= 1, got -2\n"


class _OneConv(nn.Module):
    """A model whose FLOPs are known by hand: one 1x1 conv, 3 -> 4 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def data_preprocessor(self, batch: object, training: bool) -> object:
        return batch

    def forward(self, batch: object, mode: str = "predict") -> torch.Tensor:
        return self.conv(batch.images.float())  # type: ignore[attr-defined]


def test_flop_count_matches_hand_count() -> None:
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    batch = collate([Sample(image=image, meta=SampleMeta(ori_shape=(8, 8), img_shape=(8, 8)))])
    model = _OneConv()
    assert count_flops(model, batch)["total"] == 2 * 3 * 4 * 8 * 8  # one multiply-add = 2 FLOPs
    assert count_parameters(model) == {"total": 12, "trainable": 12}


def test_evaluate_writes_a_confusion_matrix(config: Path, tiny_synth: Path, tmp_path: Path) -> None:
    from masklab.config.assemble import build_model

    ckpt = tmp_path / "w.pth"
    model = build_model(config, overrides=[], meta=_synth_meta(tiny_synth))
    torch.save({"model": model.state_dict()}, ckpt)
    cm_dir = tmp_path / "cm"
    args = ["evaluate", str(config), str(ckpt), f"dataset.root={tiny_synth}", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "m.json"), "--confusion", str(cm_dir)]) == 0
    rows = (cm_dir / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0].startswith("gt\\pred,background") and len(rows) == 1 + 7
    total = sum(int(v) for row in rows[1:] for v in row.split(",")[1:])
    assert total == 2 * 64 * 64  # every pixel of the 2 val images (none ignored)
    assert (cm_dir / "confusion_matrix.png").is_file()


def _synth_meta(root: Path) -> object:
    from masklab.data.meta import DatasetMeta

    return DatasetMeta.from_json(json.loads((root / "meta.json").read_text()))
