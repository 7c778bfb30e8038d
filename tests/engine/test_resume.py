"""An interrupted-and-resumed run equals the uninterrupted run bit-for-bit on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masklab.engine import (
    CheckpointHook,
    EMAHook,
    Trainer,
    build_optimizer,
    build_param_groups,
    build_scheduler,
)
from masklab.engine.hooks.base import Hook
from masklab.errors import CheckpointError

from .toy import ToyModel, toy_loader


class Record(Hook):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def after_train_iter(self, trainer: Trainer) -> None:
        assert trainer.state is not None
        self.losses.append(dict(trainer.state.losses))


def make_trainer(
    work_dir: Path,
    max_iters: int,
    record: Record,
    checkpoint_every: int,
    *,
    lr: float = 0.05,
    paramwise: dict[str, tuple[float, float]] | None = None,
    config: dict | None = None,
) -> Trainer:
    torch.manual_seed(0)  # same initial weights in every trainer
    model = ToyModel()
    groups = build_param_groups(model, lr, 1e-4, paramwise=paramwise or {"cls": (2.0, 0.0)})
    optimizer = build_optimizer("AdamW", groups, lr=lr)
    scheduler = build_scheduler(
        optimizer, "poly", 20, warmup_iters=3, warmup_ratio=0.1, power=0.9, min_lr=1e-4
    )
    hooks = [record, CheckpointHook(interval=checkpoint_every), EMAHook(momentum=0.1, warmup=2)]
    return Trainer(
        model,
        optimizer,
        lambda start: toy_loader(start, seed=3),
        max_iters,
        scheduler=scheduler,
        hooks=hooks,
        work_dir=work_dir,
        accumulate_steps=2,
        clip_grad=1.0,
        seed=7,
        config=config,
        progress=False,
    )


def test_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    full_rec = Record()
    full = make_trainer(tmp_path / "full", 20, full_rec, checkpoint_every=100)
    full.train()

    first_rec = Record()
    first = make_trainer(tmp_path / "split", 10, first_rec, checkpoint_every=10)
    first.train()
    # Disturb every RNG so that only a correct restore can reproduce the rest of the run.
    torch.manual_seed(12345)
    second_rec = Record()
    second = make_trainer(tmp_path / "split", 20, second_rec, checkpoint_every=100)
    used = second.resume()
    assert used is not None and used.name == "iter_0000010.pth"
    assert second.iter == 10
    second.train()

    assert len(full_rec.losses) == 20
    assert first_rec.losses + second_rec.losses == full_rec.losses
    full_state = full.model.state_dict()
    for name, value in second.model.state_dict().items():
        assert torch.equal(value, full_state[name]), name
    ema_full = full.find_hook(EMAHook).ema.state_dict()  # type: ignore[union-attr]
    ema_split = second.find_hook(EMAHook).ema.state_dict()  # type: ignore[union-attr]
    for name, value in ema_split.items():
        assert torch.equal(value, ema_full[name]), f"ema {name}"
    assert second.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_resume_that_does_not_fit_is_one_error_and_creates_no_work_dir(tmp_path: Path) -> None:
    first = make_trainer(tmp_path / "first", 2, Record(), checkpoint_every=2)
    first.train()
    ckpt = tmp_path / "first" / "checkpoints" / "iter_0000002.pth"

    other = ToyModel(num_classes=4)  # another model: its classifier has one class more
    opt = torch.optim.AdamW(other.parameters(), lr=0.05)
    trainer = Trainer(other, opt, lambda start: toy_loader(start), 4, work_dir=tmp_path / "w", progress=False)
    with pytest.raises(
        CheckpointError, match=r"weights do not fit this model \(2 shape mismatches: cls.weight"
    ):
        trainer.resume(ckpt)
    assert not (tmp_path / "w").exists()  # the work dir is created when training starts

    same = ToyModel()  # the same model with one param group where the checkpoint has several
    opt = torch.optim.AdamW(same.parameters(), lr=0.05)
    trainer = Trainer(same, opt, lambda start: toy_loader(start), 4, work_dir=tmp_path / "w", progress=False)
    with pytest.raises(CheckpointError, match="optimizer state does not fit this run's optimizer"):
        trainer.resume(ckpt)


def _lrs(trainer: Trainer) -> list[float]:
    return [g["lr"] for g in trainer.optimizer.param_groups]


def test_resume_applies_this_runs_lr_and_multipliers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resumed run trains with its own lr and lr_mult (as one with a changed batch does): the
    checkpoint gives the optimizer state and the position on the curve, and one line says what
    changed. Before, the checkpoint's base LRs silently won."""
    make_trainer(tmp_path / "a", 10, Record(), checkpoint_every=10).train()
    new = {"lr": 0.02, "paramwise": {"cls": (0.5, 0.0)}}
    reference = make_trainer(tmp_path / "ref", 20, Record(), checkpoint_every=100, **new)
    reference.scheduler.last_iter = 10
    reference.scheduler._apply()  # where a fresh run with the new settings is at iteration 10

    capsys.readouterr()
    resumed = make_trainer(tmp_path / "a", 20, Record(), checkpoint_every=100, **new)
    resumed.resume()
    assert _lrs(resumed) == pytest.approx(_lrs(reference), rel=1e-12)
    assert [g["lr_mult"] for g in resumed.optimizer.param_groups] == [1.0, 0.5]
    assert resumed.scheduler.base_lrs == pytest.approx([0.02, 0.01])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("resume:")]
    assert lines == [
        "resume: this run's optimizer settings replace the checkpoint's: group 0 lr 0.05 -> 0.02, "
        "group 1 lr 0.1 -> 0.01 (optimizer state and schedule position from the checkpoint)"
    ]
    resumed.train()  # and it trains on from there
    assert resumed.iter == 20

    # With the configs at hand (as `masklab train` passes them), the line names the config keys.
    old_cfg = {"train": {"optim": {"lr": 0.05, "paramwise": {"cls": {"lr_mult": 2.0, "decay_mult": 0.0}}}}}
    new_cfg = {"train": {"optim": {"lr": 0.02, "paramwise": {"cls": {"lr_mult": 0.5, "decay_mult": 0.0}}}}}
    make_trainer(tmp_path / "b", 2, Record(), checkpoint_every=2, config=old_cfg).train()
    capsys.readouterr()
    make_trainer(tmp_path / "b", 4, Record(), checkpoint_every=2, config=new_cfg, **new).resume()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("resume:")]
    assert lines == [
        "resume: this run's optimizer settings replace the checkpoint's: train.optim.lr 0.05 -> 0.02, "
        "train.optim.paramwise.cls.lr_mult 2 -> 0.5 (optimizer state and schedule position from the checkpoint)"
    ]
    # Unchanged settings: nothing to say, and the uninterrupted run is reproduced (first test).
    capsys.readouterr()
    make_trainer(tmp_path / "b", 4, Record(), checkpoint_every=2, config=old_cfg).resume()
    assert "resume:" not in capsys.readouterr().out


def test_resume_refuses_regrouped_parameters(tmp_path: Path) -> None:
    """A paramwise key that moves parameters between groups of unchanged sizes would load Adam's
    moments into other parameters: one line instead."""
    make_trainer(tmp_path / "a", 2, Record(), checkpoint_every=2).train()
    # Groups {conv, norm} + {cls} become {conv, cls} + {norm}: 4 + 2 parameters either way.
    moved = make_trainer(tmp_path / "a", 4, Record(), checkpoint_every=100, paramwise={"norm": (2.0, 0.0)})
    with pytest.raises(
        CheckpointError, match=r"parameter group 0 holds other parameters than in the checkpoint"
    ):
        moved.resume()


class StopAt(Hook):
    """Ends the run after iteration ``n``, as a crash after its checkpoint would."""

    priority = 99

    def __init__(self, n: int) -> None:
        self.n = n

    def after_train_iter(self, trainer: Trainer) -> None:
        trainer.should_stop = trainer.iter == self.n


def _train_records(work_dir: Path) -> dict[int, dict]:
    import json

    lines = (work_dir / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    drop = ("time", "data_time", "train_cpu_s")
    return {
        r["iteration"]: {k: v for k, v in r.items() if k not in drop} for r in records if r["mode"] == "train"
    }


def test_resume_inside_a_log_interval_logs_the_uninterrupted_values(tmp_path: Path) -> None:
    # A checkpoint at iteration 6 cuts the log interval 5..8: the record at 8 must still average
    # iterations 5..8 (the sums of 5 and 6 travel in the checkpoint), not 7..8 alone.
    from masklab.engine.hooks.logger import LoggerHook

    def run(work_dir: Path, stop: int | None, resume: bool) -> None:
        trainer = make_trainer(work_dir, 12, Record(), checkpoint_every=6)
        trainer.hooks = sorted(
            [
                *trainer.hooks,
                LoggerHook(log_interval=4, tensorboard=False),
                *([StopAt(stop)] if stop else []),
            ],
            key=lambda h: h.priority,
        )
        if resume:
            trainer.resume()
        trainer.train()

    run(tmp_path / "full", None, False)
    run(tmp_path / "split", 6, False)
    run(tmp_path / "split", None, True)
    full, split = _train_records(tmp_path / "full"), _train_records(tmp_path / "split")
    assert sorted(full) == sorted(split) == [4, 8, 12]
    assert split == full
