"""Durability: ``kill -9`` of ``masklab train`` at a random moment (checkpointing every iteration,
so the kill often lands inside a save), then ``--resume`` ends with the same weights and logged
losses as an uninterrupted run; checkpoints are never torn. Non-finite losses stop with a clear
line and keep the last good checkpoint. Checkpoints and configs cannot run code."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main
from masklab.engine.checkpoint import find_latest, load_checkpoint
from masklab.errors import CheckpointError, ConfigError

TINY = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"
ITERS = 40  # enough iterations after the first checkpoint that the kill lands mid-run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masklab.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("durability")
    synthesize(root, num_train=4, num_val=2, size=64, seed=0, max_objects=2)
    return root


def _argv(root: Path, work: Path, *extra: str) -> list[str]:
    return [
        "train", str(TINY), f"dataset.root={root}", "--work-dir", str(work), "--no-progress",
        f"train.max_iters={ITERS}", "train.checkpoint_interval=1", "train.max_keep_ckpts=2", *extra,
    ]  # fmt: skip


def _losses(work: Path) -> dict[int, float]:
    """Last logged loss per iteration (a resumed run re-logs the iterations after its checkpoint)."""
    out: dict[int, float] = {}
    for line in (work / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("mode") == "train":
            out[rec["iteration"]] = rec["loss"]
    return out


def _weights(work: Path) -> dict[str, torch.Tensor]:
    latest = find_latest(work)
    assert latest is not None
    return load_checkpoint(latest)["model"]


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted(data_root: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    assert main(_argv(data_root, ref)) == 0
    work = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "masklab", *_argv(data_root, work)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Wait for the first checkpoint, then kill at a random moment within the next iterations.
    deadline = time.time() + 180
    while not (work / "checkpoints" / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill; nothing was tested"
    # Never torn: every checkpoint file there loads; the latest pointer names a loadable one.
    for ckpt in (work / "checkpoints").glob("iter_*.pth"):
        load_checkpoint(ckpt)
    killed_at = int(load_checkpoint(find_latest(work))["iteration"])
    assert 1 <= killed_at < ITERS
    print(
        f"killed after checkpoint {killed_at}; leftover temporary files: {len(list((work / 'checkpoints').glob('.*.tmp')))}"
    )
    assert main(_argv(data_root, work, "--resume")) == 0
    assert _losses(work) == _losses(ref) and len(_losses(ref)) == ITERS
    ref_w, got_w = _weights(ref), _weights(work)
    assert ref_w.keys() == got_w.keys()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w), (
        f"weights differ (killed after iter {killed_at})"
    )


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "nan"
    code = main(_argv(data_root, work, "train.optim.lr=1e12", "train.optim.base_batch_size=null"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert (
        "non-finite loss at iteration" in err[0] and "loss_ce=" in err[0] and "last good checkpoint" in err[0]
    )
    good = load_checkpoint(find_latest(work))
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert f"iteration {good['iteration'] + 1}" in err[0]


@pytest.mark.slow
def test_nonfinite_skips_are_configurable(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "skip"
    argv = _argv(
        data_root,
        work,
        "train.optim.lr=1e12",
        "train.optim.base_batch_size=null",
        f"train.nonfinite.max_skips={ITERS}",
    )
    assert main(argv) == 0
    assert "step skipped" in capsys.readouterr().out


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Path("/etc/passwd")}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)


def test_a_text_file_named_pth_is_not_called_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "json.pth"
    path.write_text('{"model": {}}')
    with pytest.raises(CheckpointError, match=r"json\.pth: not a readable checkpoint \(not a torch file\)"):
        load_checkpoint(path)


def test_the_latest_pointer_loads_the_checkpoint_it_names(tmp_path: Path) -> None:
    from masklab.engine.checkpoint import save_checkpoint, write_latest

    folder = tmp_path / "checkpoints"
    ckpt = save_checkpoint(folder / "iter_0000020.pth", {"model": {"w": torch.ones(1)}, "iteration": 20})
    write_latest(ckpt)
    assert load_checkpoint(folder / "latest")["iteration"] == 20
    (folder / "latest").write_text("iter_0000099.pth\n")
    with pytest.raises(CheckpointError, match=r"latest: points at 'iter_0000099.pth', which does not exist"):
        load_checkpoint(folder / "latest")


def test_python_yaml_tag_is_refused(tmp_path: Path) -> None:
    from masklab.config.load import load_config

    marker = tmp_path / "ran"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(cfg)
    assert not marker.exists()
