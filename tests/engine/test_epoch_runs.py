"""A run of ``train.max_epochs``: validation and checkpoint intervals count epochs (converted to
iterations from the data set size and the effective batch), ``log_interval`` counts iterations,
and ``schedule.by_epoch`` milestones count epochs; what cannot be honoured is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from masklab.config.assemble import build_trainer, resolve
from masklab.engine import CheckpointHook, EvalHook, LoggerHook
from masklab.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masklab.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("epochs")
    synthesize(root, num_train=6, num_val=2, size=64, seed=0, max_objects=2)
    return root


def test_epoch_intervals_and_milestones_become_iterations(data: Path, tmp_path: Path) -> None:
    # 6 training images, batch 2: 3 iterations per epoch.
    rc = resolve(TINY, [f"dataset.root={data}", "train.max_iters=null", "train.max_epochs=4",
                        "train.val_interval=1", "train.checkpoint_interval=2", "train.log_interval=2",
                        "train.schedule={policy: step, milestones: [3], gamma: 0.5, by_epoch: true}"])  # fmt: skip
    trainer = build_trainer(rc, work_dir=tmp_path / "w", progress=False)
    assert trainer.max_iters == 12
    assert trainer.find_hook(EvalHook).interval == 3  # every epoch, not every iteration
    assert trainer.find_hook(CheckpointHook).interval == 6  # every 2 epochs
    assert trainer.find_hook(LoggerHook).log_interval == 2  # iterations, as MMEngine's LoggerHook
    lr = trainer.scheduler.base_lrs[0]
    assert trainer.scheduler.factor(8, lr) == lr and trainer.scheduler.factor(9, lr) == 0.5 * lr  # epoch 3
    assert trainer.run_message == (
        "4 epochs x 3 iterations (6 samples // effective batch 2) = 12 iterations; validation every 1 "
        "epoch(s) = 3 iterations, checkpoints every 2 epoch(s) = 6 iterations, a log line every 2 iterations"
    )

    # A run of max_iters: intervals and milestones stay iterations, and nothing is converted.
    rc = resolve(TINY, [f"dataset.root={data}", "train.val_interval=1",
                        "train.schedule={policy: step, milestones: [3]}"])  # fmt: skip
    trainer = build_trainer(rc, work_dir=tmp_path / "w", progress=False)
    assert trainer.find_hook(EvalHook).interval == 1 and trainer.run_message == ""
    assert trainer.scheduler.factor(3, 1.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.schedule={policy: step, milestones: [2], by_epoch: true}"],
         "<override>: train.schedule: by_epoch: true counts milestones in epochs, which needs max_epochs "
         "(got max_iters 4)"),
        (["train.max_iters=null", "train.max_epochs=2", "train.schedule.by_epoch=true"],
         "<override>: train.schedule.by_epoch: counts the step policy's milestones in epochs, and policy "
         "'constant' has none (it sets the LR every iteration over the whole run): drop by_epoch (got True)"),
    ],
)  # fmt: skip
def test_by_epoch_that_cannot_be_honoured_is_one_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(TINY, overrides)
    assert str(err.value) == expected
