"""EMA formula, logger outputs, eval metrics file, checkpoint rotation, hook order and registry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from masklab.config.registries import HOOKS
from masklab.engine import (
    CheckpointHook,
    EMAHook,
    EvalHook,
    LoggerHook,
    NonFiniteLossHook,
    TimerHook,
    Trainer,
    ValLoop,
)
from masklab.engine.checkpoint import find_latest, load_checkpoint, load_model_weights
from masklab.engine.hooks.base import Hook
from masklab.errors import ConfigError

from ..toy import PixelAccuracy, ToyModel, toy_loader


def test_ema_formula_with_warmup() -> None:
    model = nn.Linear(1, 1, bias=False)
    hook = EMAHook(momentum=0.25, warmup=2)
    hook.ema = nn.Linear(1, 1, bias=False)
    hook.ema.weight.data.fill_(100.0)
    expected = 100.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        model.weight.data.fill_(value)
        m = max(0.25, 2 / (2 + n))  # n=0 gives 1: the first update copies
        expected = (1 - m) * expected + m * value
        hook.update(model)
        assert float(hook.ema.weight.detach()) == pytest.approx(expected)
    assert hook.updates == 5


def test_ema_swaps_in_for_eval_and_is_checkpointed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModel(dropout=0.0)
    seen: list[torch.Tensor] = []

    class Peek(Hook):
        priority = 45  # after EMAHook (30), which swaps the average in during before_val

        def before_val(self, trainer: Trainer) -> None:
            seen.append(model.cls.weight.detach().clone())

    ema = EMAHook(momentum=0.5)
    val = ValLoop(model, [next(toy_loader(seed=5))], PixelAccuracy())
    hooks = [ema, EvalHook(interval=3), Peek(), CheckpointHook(interval=3)]
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        toy_loader(),
        3,
        hooks=hooks,
        work_dir=tmp_path,
        val_loop=val,
        progress=False,
    )
    trainer.train()
    assert ema.ema is not None
    assert torch.equal(seen[0], ema.ema.cls.weight)  # evaluated with the average
    assert not torch.equal(model.cls.weight, ema.ema.cls.weight)  # and swapped back after
    payload = load_checkpoint(tmp_path / "checkpoints" / "iter_0000003.pth")
    assert payload["ema"]["updates"] == 3
    assert torch.equal(payload["ema"]["state"]["cls.weight"], ema.ema.cls.weight)
    assert torch.equal(payload["model"]["cls.weight"], model.cls.weight)  # raw weights kept for resume
    # Evaluation / inference / export of the checkpoint load the average that validation scored.
    deployed = ToyModel(dropout=0.0)
    report = load_model_weights(deployed, tmp_path / "checkpoints" / "iter_0000003.pth", strict=True)
    assert torch.equal(deployed.cls.weight, ema.ema.cls.weight)
    assert report.ema and report.message("ckpt").startswith("loaded EMA weights from ckpt")


@pytest.mark.parametrize("momentum", [0.9998, 0.999, 0.0, -0.1])
def test_ema_momentum_written_as_a_decay_is_refused(momentum: float) -> None:
    with pytest.raises(ConfigError, match=r"EMA momentum .*: expected 0 < momentum <= 0.5.*1 - d"):
        EMAHook(momentum=momentum)


def test_ema_config_default_is_a_small_momentum() -> None:
    from masklab.config.schema import EMAConfig

    hook = EMAHook(momentum=EMAConfig().momentum)  # the default must pass the hook's own check
    assert hook.momentum == pytest.approx(0.0002)


def test_logger_writes_jsonl_tensorboard_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    val = ValLoop(model, [next(toy_loader(seed=5))], PixelAccuracy())
    hooks = [LoggerHook(log_interval=2), TimerHook(), EvalHook(interval=2)]
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        toy_loader(),
        4,
        hooks=hooks,
        work_dir=tmp_path,
        val_loop=val,
        progress=False,
    )
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["mode"] == "train"]
    evals = [r for r in records if r["mode"] == "val"]
    assert [r["iteration"] for r in train] == [2, 4] and [r["iteration"] for r in evals] == [2, 4]
    assert {"loss", "loss_ce", "loss_reg", "acc_seg", "lr", "time", "data_time", "train_cpu_s"} <= set(
        train[0]
    )
    assert 0 < train[0]["train_cpu_s"] <= train[1]["train_cpu_s"]  # cumulative CPU seconds
    assert "aAcc" in evals[0]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    out = capsys.readouterr().out
    assert "iter 2/4" in out and "eta" in out and "loss_ce" in out and "eval at iter 4" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["latest"]["iteration"] == 4
    best = metrics["best"]
    assert best["key"] == "aAcc"
    assert best["metrics"]["aAcc"] == max(r["aAcc"] for r in evals)


def test_checkpoint_rotation_and_final_save(tmp_path: Path) -> None:
    model = ToyModel()
    hook = CheckpointHook(interval=2, max_keep=2)
    Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        toy_loader(),
        7,
        hooks=[hook],
        work_dir=tmp_path,
        progress=False,
    ).train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*.pth"))
    assert names == [
        "iter_0000006.pth",
        "iter_0000007.pth",
    ]  # 7 = the end, saved although not a multiple of 2
    assert find_latest(tmp_path) == tmp_path / "checkpoints" / "iter_0000007.pth"
    assert load_checkpoint(find_latest(tmp_path))["iteration"] == 7  # type: ignore[arg-type]


def test_rotation_never_deletes_this_runs_checkpoints_for_an_earlier_longer_runs(tmp_path: Path) -> None:
    """A fresh 3-iteration run in a work dir holding iter 4-6 of an earlier run: pruning by number
    deleted the new checkpoints and left ``latest`` pointing at a missing file."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for n in (4, 5, 6):
        (folder / f"iter_{n:07d}.pth").write_bytes(b"earlier run")
    model = ToyModel()
    hook = CheckpointHook(interval=1, max_keep=2)
    Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), toy_loader(), 3, hooks=[hook], work_dir=tmp_path,
        progress=False,
    ).train()  # fmt: skip
    names = sorted(p.name for p in folder.glob("iter_*.pth"))
    assert names == [f"iter_{n:07d}.pth" for n in (2, 3, 4, 5, 6)]  # own newest 2 kept, the others untouched
    latest = find_latest(tmp_path)
    assert latest == folder / "iter_0000003.pth" and latest.is_file()


def test_hooks_run_in_priority_order_and_are_registered(tmp_path: Path) -> None:
    hooks = [LoggerHook(), CheckpointHook(), EvalHook(), EMAHook(), NonFiniteLossHook(), TimerHook()]
    model = ToyModel()
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), toy_loader(), 1, hooks=hooks, work_dir=tmp_path
    )
    assert [type(h).__name__ for h in trainer.hooks] == [
        "TimerHook",
        "NonFiniteLossHook",
        "EMAHook",
        "EvalHook",
        "LoggerHook",
        "CheckpointHook",
    ]
    for hook in hooks:
        assert HOOKS.get(type(hook).__name__) is type(hook)


def test_eval_hook_without_val_loop_fails_before_training(tmp_path: Path) -> None:
    model = ToyModel()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        toy_loader(),
        2,
        hooks=[EvalHook(1)],
        work_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="no validation loop"):
        trainer.train()
    assert trainer.iter == 0


def test_timer_charges_training_cpu_not_evaluation() -> None:
    import time

    from masklab.engine.hooks.timer import TimerHook

    def burn(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    class _State:
        iter_time = 0.0
        data_time = 0.0

    class _Trainer:
        state = _State()

    timer, trainer = TimerHook(), _Trainer()
    timer.before_run(trainer)  # type: ignore[arg-type]
    burn(0.05)
    timer.after_train_iter(trainer)  # type: ignore[arg-type]
    timer.before_val(trainer)  # type: ignore[arg-type]
    burn(0.2)  # evaluation: not charged
    timer.after_val(trainer, {})  # type: ignore[arg-type]
    burn(0.05)
    timer.after_train_iter(trainer)  # type: ignore[arg-type]
    assert 0.1 <= timer.train_cpu_seconds < 0.2


@pytest.mark.parametrize("rule", ["greater", "less"])
def test_eval_hook_best_skips_nan(tmp_path: Path, rule: str) -> None:
    """An early NaN metric must not stay "best" (NaN compares false with everything), and a later
    NaN must not replace a numeric best."""
    hook = EvalHook(interval=1, rule=rule)  # type: ignore[arg-type]
    trainer = SimpleNamespace(iter=0, work_dir=tmp_path)
    for iteration, value in [
        (1, float("nan")),
        (2, 0.5),
        (3, float("nan")),
        (4, 0.25 if rule == "less" else 0.75),
    ]:
        trainer.iter = iteration
        hook.after_val(trainer, {"mIoU": value})  # type: ignore[arg-type]
        if iteration == 2:
            assert hook.best is not None and hook.best["iteration"] == 2
        if iteration == 3:
            assert hook.best is not None and hook.best["iteration"] == 2
    assert hook.best is not None and hook.best["iteration"] == 4
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["best"]["iteration"] == 4 and saved["latest"]["iteration"] == 4
