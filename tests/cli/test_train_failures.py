"""How ``masklab train`` fails: a checkpoint of another model on ``--resume``, an override swallowed
by ``--resume``, errors raised in loader worker processes, and the work dir of a run that stops on a
user error before its first checkpoint. Each is one ``error:`` line, exit 2, nothing half-written."""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.cli.main import main

from . import test_bad_input
from .test_bad_input import TINY, Env, _other_model_ckpt

# test_bad_input's ``env`` (a private copy of the data set below, a checkpoint of its model).
env = test_bad_input.env


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """64 px images (32 px ones are too small for the GroupNorm head in single-image validation)."""
    from masklab.config.assemble import build_dataset, build_model, resolve
    from masklab.data.synthetic import synthesize
    from masklab.engine.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("train_failures")
    synthesize(root / "data", num_train=2, num_val=2, size=64, seed=0, max_objects=2)
    rc = resolve(TINY, [f"dataset.root={root / 'data'}"])
    model = build_model(rc, build_dataset(rc, "train").metainfo)
    return root / "data", save_checkpoint(root / "good.pth", {"model": model.state_dict(), "iteration": 0})


def _error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except Exception:  # noqa: BLE001
        pytest.fail("traceback instead of one line:\n" + traceback.format_exc())
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _break_label(env: Env, split: str) -> None:
    """Label value 42 in the first label map of ``split`` (the tiny dataset has fewer classes)."""
    path = env.data / "labels" / split / "000000.png"
    arr = np.array(Image.open(path))
    arr[0, 0] = 42
    Image.fromarray(arr).save(path)


def test_resume_from_another_models_checkpoint(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from masklab.engine.rng import capture_rng

    other = _other_model_ckpt(env)  # a resumable payload whose head has one class more
    state = torch.load(other, weights_only=True)["model"]
    optimizer = {"state": {}, "param_groups": []}
    torch.save({"model": state, "optimizer": optimizer, "iteration": 2, "rng": capture_rng()}, other)
    line = _error_line(env.train("--resume", str(other)), capsys)
    assert line.startswith(f"error: {other}: weights do not fit this model (")
    assert "conv_seg" in line and "shape mismatch" in line
    assert not env.work.exists()  # no empty run folder


def test_resume_swallowing_an_override_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", str(TINY), "--work-dir", str(env.work), "--resume", f"dataset.root={env.data}"]
    line = _error_line([*argv, "train.max_iters=3"], capsys)
    assert f"--resume dataset.root={env.data}: --resume takes a checkpoint path" in line
    assert "--resume=CKPT" in line and "before --resume" in line
    assert not env.work.exists()


def test_resume_accepts_an_existing_file_whose_name_holds_equals(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = env.tmp / "lr=0.1.pth"
    ckpt.write_bytes(env.ckpt.read_bytes())  # weights only: resume reads it, then wants the optimizer
    line = _error_line(env.train("--resume", str(ckpt)), capsys)
    assert line == f"error: {ckpt}: cannot resume, missing optimizer, rng"


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_worker_errors_print_the_original_message(
    env: Env, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _break_label(env, "train" if command == "train" else "val")
    lines = []
    for workers in (0, 1):
        setting = f"train.num_workers={workers}"
        if command == "train":
            argv = env.train(setting)
        else:
            argv = ["evaluate", str(TINY), str(env.ckpt), f"dataset.root={env.data}", setting,
                    "--out", str(env.tmp / "m.json"), "--no-progress"]  # fmt: skip
        lines.append(_error_line(argv, capsys))
    assert "42" in lines[0] and "000000.png" in lines[0]
    assert lines[1] == lines[0]  # not "Caught DataError in DataLoader worker process 0. Original ..."


def test_failed_fresh_run_removes_what_it_created(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _break_label(env, "train")
    nested = env.tmp / "runs" / "a" / "b"
    line = _error_line(env.train("--work-dir", str(nested)), capsys)
    assert "42" in line
    assert not (env.tmp / "runs").exists()  # the parents it created go too

    kept = env.tmp / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    _error_line(env.train("--work-dir", str(kept)), capsys)
    assert (kept / "notes.txt").read_text() == "mine"  # a folder that was there is not the run's to remove
    # ... but what the failed run added to it goes (session 10: config.yaml and tb/ stayed behind).
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    # An earlier run's config.yaml, rewritten by the failed run, is put back as it was.
    (kept / "config.yaml").write_text("# an earlier run's config\n")
    _error_line(env.train("--work-dir", str(kept)), capsys)
    assert (kept / "config.yaml").read_text() == "# an earlier run's config\n"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "notes.txt"]


def test_failed_resumed_run_keeps_its_work_dir(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    first = env.tmp / "first"
    assert main(env.train("--work-dir", str(first), "train.max_iters=2")) == 0
    ckpt = first / "checkpoints" / "iter_0000002.pth"
    _break_label(env, "train")
    resumed = env.tmp / "resumed"
    line = _error_line(env.train("--work-dir", str(resumed), "--resume", str(ckpt)), capsys)
    assert "42" in line
    assert (resumed / "config.yaml").is_file()  # never removed on resume
    assert torch.load(ckpt, weights_only=True)["iteration"] == 2


def test_nproc_config_error_is_one_line_before_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--nproc 2`` checks the config once, in the launcher: one line and exit 2, instead of the
    line once per rank and torchrun's ChildFailedError traceback (exit 1)."""
    import masklab.cli.train as train_cli

    launched: list[object] = []
    monkeypatch.setattr(train_cli, "_launch_torchrun", lambda args: launched.append(args) or 0)
    argv = ["train", str(TINY), "--nproc", "2", "--work-dir", str(tmp_path / "w"), "train.optim.lrr=1"]
    line = _error_line(argv, capsys)
    assert line == "error: <override>: train.optim.lrr: unknown key for OptimConfig; did you mean 'lr'?"
    assert not launched and not (tmp_path / "w").exists()
    # A good config is launched, with nothing built in the launcher.
    assert main(["train", str(TINY), "--nproc", "2", "--work-dir", str(tmp_path / "w")]) == 0
    assert len(launched) == 1 and not (tmp_path / "w").exists()
