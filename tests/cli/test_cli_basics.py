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
