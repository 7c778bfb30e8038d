"""Smoothed iteration timing and ETA."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from masklab.config.registries import HOOKS
from masklab.engine.hooks.base import Hook

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer


@HOOKS.register()
class TimerHook(Hook):
    """Averages iteration and data time over a window and estimates the time left.

    Runs first (priority 10) so that the wall time it measures between iterations includes the
    other hooks' work, which the ETA must account for.

    Args:
        window: iterations in the moving average.
    """

    priority = 10

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.iter_times: deque[float] = deque(maxlen=window)
        self.data_times: deque[float] = deque(maxlen=window)
        self._last: float | None = None

    def before_run(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()

    def after_train_iter(self, trainer: Trainer) -> None:
        now = time.perf_counter()
        assert trainer.state is not None
        self.iter_times.append(now - self._last if self._last is not None else trainer.state.iter_time)
        self.data_times.append(trainer.state.data_time)
        self._last = now

    def after_val(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        # Evaluation time is not training time: restart the clock so it does not inflate the ETA.
        self._last = time.perf_counter()

    @property
    def avg_iter_time(self) -> float:
        """Mean seconds per iteration over the window (0 before the first)."""
        return sum(self.iter_times) / len(self.iter_times) if self.iter_times else 0.0

    @property
    def avg_data_time(self) -> float:
        """Mean seconds waiting for data per iteration over the window."""
        return sum(self.data_times) / len(self.data_times) if self.data_times else 0.0

    def eta_seconds(self, trainer: Trainer) -> float:
        """Seconds left at the current pace."""
        return self.avg_iter_time * max(0, trainer.max_iters - trainer.iter)
