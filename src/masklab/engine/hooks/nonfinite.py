"""The NaN guard: stop (or skip a few steps) when a loss or gradient is not finite."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from masklab.config.registries import HOOKS
from masklab.engine.checkpoint import find_latest
from masklab.engine.hooks.base import Hook
from masklab.errors import CheckpointError, TrainingError

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer


@HOOKS.register()
class NonFiniteLossHook(Hook):
    """Tolerates up to ``max_skips`` non-finite steps (the trainer already skipped the optimiser
    step), then stops with a :class:`TrainingError` naming the iteration and every loss term.

    Priority 20: before EMA, evaluation, checkpointing and logging, so a bad step is never
    averaged, saved or reported as fine; the last good checkpoint stays the latest.

    Args:
        max_skips: non-finite steps allowed over the whole run (0: stop at the first).
    """

    priority = 20

    def __init__(self, max_skips: int = 0) -> None:
        self.max_skips = max_skips
        self.skips = 0

    def after_train_iter(self, trainer: Trainer) -> None:
        state = trainer.state
        assert state is not None
        if not state.skipped:
            return
        self.skips += 1
        if self.skips > self.max_skips:
            try:
                latest = find_latest(trainer.work_dir)
            except CheckpointError:
                latest = None
            where = f"; last good checkpoint: {latest}" if latest else "; no checkpoint saved yet"
            raise TrainingError(
                f"{state.describe_nonfinite()} (skipped {self.skips - 1} of max {self.max_skips}){where}"
            )
        trainer.nonfinite_tolerated = True
        trainer.log(f"warning: {state.describe_nonfinite()}; step skipped ({self.skips}/{self.max_skips})")

    def state_dict(self) -> dict[str, Any]:
        return {"skips": self.skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skips = int(state["skips"])
