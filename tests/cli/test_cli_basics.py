"""The masklab command: help, config show, data synth."""

from __future__ import annotations

import json

import pytest
import yaml

from masklab.cli.main import main

from .conftest import DEMO_CONFIG


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "train" in capsys.readouterr().out


def test_config_show_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", str(DEMO_CONFIG), "train.optim.lr=0.5", "train.max_iters=7"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert data["train"]["optim"]["lr"] == 0.5
    assert data["train"]["max_iters"] == 7
    assert data["model"]["backbone"]["arch"] == "b0"  # from the _base_ chain


def test_config_show_unknown_key_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "show", str(DEMO_CONFIG), "train.optim.lrr=0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:")
    assert "lrr" in err[0] and "'lr'" in err[0]


MAL_CONFIG = DEMO_CONFIG.parents[1] / "mal" / "mal_tiny_synthetic-64.yaml"


@pytest.mark.parametrize(
    ("config", "override", "needle"),
    [
        (DEMO_CONFIG, "model.decode_head.chanels=3", "model.decode_head.chanels: unknown key for FCNHead; did you mean 'channels'?"),
        (MAL_CONFIG, "model.mask_head_num_conv=3", "did you mean 'mask_head_num_convs'?"),
        (MAL_CONFIG, "dataset.train_ann_pth=x", "did you mean 'train_ann_path'?"),
        (MAL_CONFIG, "dataset.crop_size=abc", "dataset.crop_size: expected int, got str 'abc'"),
        (MAL_CONFIG, "model.frozen_stages=[1,2]", "model.frozen_stages: expected one value"),
        (MAL_CONFIG, "model.teacher_momentum=0.1", "model.teacher_momentum: expected a decay in [0.5, 1)"),
        (MAL_CONFIG, "train.max_epochs=3", "train.max_epochs: a MAL spec sets this through the TAO key(s) num_epochs"),
        (DEMO_CONFIG, "evaluate.tta.scales=[]", "evaluate.tta.scales: expected at least one resize ratio"),
    ],
)  # fmt: skip
def test_config_show_checks_what_train_checks(
    config, override: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config show`` binds every node as a run does (it printed these configs and exited 0)."""
    code = main(["config", "show", str(config), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: <override>: ") and needle in err[0], err


def test_data_synth_writes_coco_and_labels(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    assert (
        main(["data", "synth", "--out", str(out), "--num-train", "3", "--num-val", "1", "--size", "48"]) == 0
    )
    coco = json.loads((out / "annotations" / "train.json").read_text())
    assert len(coco["images"]) == 3
    assert {a["name"] for a in coco["attributes"]} >= {"color", "pattern"}
    assert len(list((out / "labels" / "val").glob("*.png"))) == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_every_command_applies_runtime_num_threads(threads: int) -> None:
    """Commands read their config through ``resolve_for_cli``, which applies ``runtime.num_threads``
    (evaluate, infer, export and benchmark ignored it: only the trainer set it)."""
    import torch

    from masklab.cli.common import resolve_for_cli

    before = torch.get_num_threads()
    other = 2 if threads == 1 else 1
    try:
        torch.set_num_threads(other)
        resolve_for_cli(str(DEMO_CONFIG), [f"runtime.num_threads={threads}"])
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
