"""Atomic saves, the latest pointer, safe loading, fine-tuning weights, safetensors, RNG states."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from masklab.engine.checkpoint import (
    export_safetensors,
    find_latest,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    write_latest,
)
from masklab.engine.rng import capture_rng, restore_rng
from masklab.errors import CheckpointError


class Arbitrary:
    """Not a tensor or plain data: a safe loader must refuse it."""


def test_failed_save_keeps_previous_and_leaves_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt" / "model.pth"
    save_checkpoint(path, {"iteration": 1, "model": {"w": torch.ones(3)}})
    real_save = torch.save

    def torn_save(obj: object, f: object) -> None:
        real_save(obj, f)  # bytes reach the temporary file ...
        raise OSError("disk full")  # ... and then the write fails

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(CheckpointError, match="model.pth"):
        save_checkpoint(path, {"iteration": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    payload = load_checkpoint(path)
    assert payload["iteration"] == 1
    assert torch.equal(payload["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pth"]


def test_latest_pointer_follows_newest(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    assert find_latest(tmp_path) is None
    for i in (1, 2):
        p = save_checkpoint(folder / f"iter_{i}.pth", {"iteration": i})
        write_latest(p)
    latest = find_latest(tmp_path)
    assert latest == folder / "iter_2.pth"
    assert (folder / "latest").read_text().strip() == "iter_2.pth"
    (folder / "iter_2.pth").unlink()
    with pytest.raises(CheckpointError, match="iter_2.pth"):
        find_latest(tmp_path)


def test_arbitrary_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": Arbitrary()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*Arbitrary"):
        load_checkpoint(path)


def test_missing_torn_and_non_dict_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    good = save_checkpoint(tmp_path / "good.pth", {"model": {"w": torch.ones(100)}})
    torn = tmp_path / "torn.pth"
    torn.write_bytes(good.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="torn.pth"):
        load_checkpoint(torn)
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(listed)


def test_rng_states_round_trip_through_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    path = save_checkpoint(tmp_path / "rng.pth", {"rng": state})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng(load_checkpoint(path)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def make_net(out: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, out))


def test_load_model_weights_reports_missing_and_unexpected(tmp_path: Path) -> None:
    src = make_net()
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("2.")}
    state["head.extra"] = torch.zeros(1)
    path = save_checkpoint(tmp_path / "c.pth", {"model": state})
    dst = make_net()
    report = load_model_weights(dst, path)
    assert report.missing == ("2.weight", "2.bias")
    assert report.unexpected == ("head.extra",)
    assert torch.equal(dst[0].weight, src[0].weight)
    msg = report.message(str(path))
    assert "missing 2" in msg and "unexpected 1" in msg and "\n" not in msg
    with pytest.raises(
        CheckpointError, match=r"c\.pth: weights do not fit this model \(missing 2: .*; unexpected 1:"
    ):
        load_model_weights(make_net(), path, strict=True)  # said "strict load failed; loaded weights; ..."


def test_load_model_weights_shape_mismatch_names_keys(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "other.pth", {"model": make_net(out=5).state_dict()})
    with pytest.raises(CheckpointError, match=r"other\.pth.*2\.weight \(5, 4\) vs model \(2, 4\)"):
        load_model_weights(make_net(out=2), path)


def test_export_safetensors_round_trip(tmp_path: Path) -> None:
    src = make_net()
    path = export_safetensors(src, tmp_path / "w.safetensors")
    dst = make_net()
    report = load_model_weights(dst, path, strict=True)
    assert report.missing == () and report.unexpected == ()
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
