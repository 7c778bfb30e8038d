"""The hook interface: a few events called in priority order.

Event order within a run: ``before_run``; then per iteration ``before_train_iter``, the step,
``after_train_iter``; ``before_val``/``after_val`` around each evaluation (called from inside
``after_train_iter`` by the eval hook, or by ``Trainer.validate``); ``after_run`` last.
For every event, hooks run in ascending ``priority`` (lower first; ties keep insertion order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer


class Hook:
    """Base class: override the events you need. ``priority``: lower runs first."""

    priority: int = 50
    #: Top-level checkpoint key for this hook's state (``ema``); None stores it under
    #: ``meta.hooks[<class name>]``.
    payload_key: str | None = None

    def before_run(self, trainer: Trainer) -> None:
        """Once, before the first iteration (after any resume)."""

    def before_train_iter(self, trainer: Trainer) -> None:
        """Before each step; ``trainer.iter`` is the number of completed iterations."""

    def after_train_iter(self, trainer: Trainer) -> None:
        """After each step; ``trainer.state`` describes it and ``trainer.iter`` counts it."""

    def before_val(self, trainer: Trainer) -> None:
        """Before an evaluation."""

    def after_val(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After an evaluation, with its metrics."""

    def after_run(self, trainer: Trainer) -> None:
        """Once, after the loop ends normally (or stops early on request)."""

    def state_dict(self) -> dict[str, Any] | None:
        """State to keep in checkpoints (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
