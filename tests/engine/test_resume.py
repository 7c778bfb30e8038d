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


def make_trainer(work_dir: Path, max_iters: int, record: Record, checkpoint_every: int) -> Trainer:
    torch.manual_seed(0)  # same initial weights in every trainer
    model = ToyModel()
    groups = build_param_groups(model, 0.05, 1e-4, paramwise={"cls": (2.0, 0.0)})
    optimizer = build_optimizer("AdamW", groups, lr=0.05)
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
