"""Training and evaluation logs: console lines, ``log.jsonl`` and TensorBoard."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masklab import strict_json
from masklab.config.registries import HOOKS
from masklab.engine.distributed import all_reduce_dict, is_main_process
from masklab.engine.hooks.base import Hook
from masklab.engine.hooks.timer import TimerHook
from masklab.errors import ConfigError

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer


@HOOKS.register()
class LoggerHook(Hook):
    """Every ``log_interval`` iterations: a console line, a ``log.jsonl`` record, TensorBoard scalars.

    Losses are averaged over the interval. Each evaluation adds a record with ``"mode": "val"``.
    Only rank 0 writes. Priority 90: last, so it reports what the other hooks did. The sums of an
    interval a checkpoint cuts travel in it, so a resumed run logs the uninterrupted run's values.

    Args:
        log_interval: iterations between log lines.
        tensorboard: also write ``work_dir/tb`` event files.
    """

    priority = 90

    def __init__(self, log_interval: int = 50, tensorboard: bool = True) -> None:
        if log_interval < 1:
            raise ConfigError(f"LoggerHook.log_interval: expected >= 1, got {log_interval}")
        self.log_interval = log_interval
        self.tensorboard = tensorboard
        self._sums: dict[str, float] = {}
        self._count = 0
        self._writer: Any = None

    def before_run(self, trainer: Trainer) -> None:
        if is_main_process() and self.tensorboard and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self._writer = SummaryWriter(log_dir=str(trainer.work_dir / "tb"))

    def _append(self, trainer: Trainer, record: dict[str, Any]) -> None:
        path: Path = trainer.work_dir / "log.jsonl"
        with path.open("a") as f:
            f.write(strict_json.dumps(record) + "\n")

    def after_train_iter(self, trainer: Trainer) -> None:
        state = trainer.state
        assert state is not None
        if state.skipped:
            return  # a tolerated NaN step would poison the averages
        for k, v in state.losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if trainer.iter % self.log_interval != 0 and trainer.iter != trainer.max_iters:
            return
        means = {k: v / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        # Every rank reaches this line at the same iterations: log the mean over ranks, not rank 0's.
        means = all_reduce_dict(means)
        if not is_main_process():
            return
        timer = trainer.find_hook(TimerHook)
        iter_time = timer.avg_iter_time if isinstance(timer, TimerHook) else state.iter_time
        data_time = timer.avg_data_time if isinstance(timer, TimerHook) else state.data_time
        eta = (
            timer.eta_seconds(trainer)
            if isinstance(timer, TimerHook)
            else iter_time * (trainer.max_iters - trainer.iter)
        )
        record: dict[str, Any] = {"mode": "train", "iteration": trainer.iter, "lr": state.lr, **means}
        record.update(time=iter_time, data_time=data_time)
        if isinstance(timer, TimerHook):
            record["train_cpu_s"] = timer.train_cpu_seconds
        if state.grad_norm is not None:
            record["grad_norm"] = state.grad_norm
        self._append(trainer, record)
        losses = "  ".join(f"{k} {v:.4f}" for k, v in means.items())
        grad = f"  grad_norm {state.grad_norm:.3f}" if state.grad_norm is not None else ""
        eta_s = str(datetime.timedelta(seconds=int(eta)))
        trainer.log(
            f"iter {trainer.iter}/{trainer.max_iters}  eta {eta_s}  lr {state.lr:.3e}  {losses}{grad}"
            f"  time {iter_time:.3f}s  data {data_time:.3f}s"
        )
        if self._writer is not None:
            for k, v in means.items():
                self._writer.add_scalar(f"train/{k}", v, trainer.iter)
            self._writer.add_scalar("train/lr", state.lr, trainer.iter)
            if state.grad_norm is not None:
                self._writer.add_scalar("train/grad_norm", state.grad_norm, trainer.iter)

    def after_val(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not is_main_process():
            return
        self._append(trainer, {"mode": "val", "iteration": trainer.iter, **metrics})
        trainer.log(f"eval at iter {trainer.iter}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(f"val/{k}", v, trainer.iter)

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank (checkpoint payload): the mean over ranks, as the record will be.
        return {"sums": all_reduce_dict(self._sums), "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = {str(k): float(v) for k, v in state["sums"].items()}
        self._count = int(state["count"])

    def after_run(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
