"""Periodic evaluation with ``metrics.json`` (latest and best)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from masklab import strict_json
from masklab.atomic_files import atomic_write
from masklab.config.registries import HOOKS
from masklab.engine.distributed import is_main_process
from masklab.engine.hooks.base import Hook
from masklab.errors import ConfigError

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer


@HOOKS.register()
class EvalHook(Hook):
    """Runs ``trainer.validate()`` every ``interval`` iterations and at the last one.

    Priority 40: after EMA (so the average evaluated is current) and before the checkpoint
    (so the saved state knows the best metric).

    Args:
        interval: iterations between evaluations.
        best_key: metric that decides "best" (default: the first metric returned).
        rule: ``greater`` or ``less`` is better for ``best_key``.
    """

    priority = 40

    def __init__(
        self, interval: int = 1000, best_key: str | None = None, rule: Literal["greater", "less"] = "greater"
    ) -> None:
        if interval < 1 or rule not in ("greater", "less"):
            raise ConfigError(
                f"EvalHook: expected interval >= 1 and rule 'greater' or 'less', got {interval}, {rule!r}"
            )
        self.interval = interval
        self.best_key = best_key
        self.rule = rule
        self.latest: dict[str, Any] | None = None
        self.best: dict[str, Any] | None = None

    def before_run(self, trainer: Trainer) -> None:
        # Fail before any training time is spent, not at the first evaluation.
        if trainer.val_loop is None:
            raise ConfigError(
                "EvalHook: the run has no validation loop (evaluate section / val dataset missing)"
            )

    def after_train_iter(self, trainer: Trainer) -> None:
        if trainer.iter % self.interval == 0 or trainer.iter == trainer.max_iters:
            trainer.validate()

    def _is_better(self, value: float) -> bool:
        """A NaN (e.g. mIoU of a val set without labelled pixels) is never better than a number, and
        any number replaces a NaN best: otherwise one early NaN would stay "best" for the whole run."""
        if self.best is None:
            return True
        old = float(self.best["metrics"][self.best["key"]])
        if math.isnan(value):
            return False
        if math.isnan(old):
            return True
        return value > old if self.rule == "greater" else value < old

    def after_val(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        key = self.best_key or next(iter(metrics))
        if key not in metrics:
            raise ConfigError(f"EvalHook.best_key: {key!r} is not among the metrics ({', '.join(metrics)})")
        self.latest = {"iteration": trainer.iter, "metrics": dict(metrics)}
        if self._is_better(metrics[key]):
            self.best = {"iteration": trainer.iter, "key": key, "metrics": dict(metrics)}
        if is_main_process():
            text = strict_json.dumps({"latest": self.latest, "best": self.best}, indent=2)
            atomic_write(trainer.work_dir / "metrics.json", lambda f: f.write(text.encode()))

    def state_dict(self) -> dict[str, Any]:
        return {"latest": self.latest, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.latest = state.get("latest")
        self.best = state.get("best")
