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
    """Averages iteration and data time over a window, estimates the time left, and adds up the
    CPU seconds this process spent training (all its threads; evaluation excluded; data-loader
    worker processes are not counted). Since this run started, not across a resume.

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
        self.train_cpu_seconds = 0.0
        self._cpu_mark: float | None = None

    def before_run(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()
        self._cpu_mark = time.process_time()

    def _charge_cpu(self) -> None:
        now = time.process_time()
        if self._cpu_mark is not None:
            self.train_cpu_seconds += now - self._cpu_mark
        self._cpu_mark = now

    def before_val(self, trainer: Trainer) -> None:
        self._charge_cpu()

    def after_train_iter(self, trainer: Trainer) -> None:
        now = time.perf_counter()
        assert trainer.state is not None
        self.iter_times.append(now - self._last if self._last is not None else trainer.state.iter_time)
        self.data_times.append(trainer.state.data_time)
        self._last = now
        self._charge_cpu()

    def after_val(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        # Evaluation time is not training time: restart the clocks so it inflates neither the ETA
        # nor the training CPU time.
        self._last = time.perf_counter()
        self._cpu_mark = time.process_time()

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
