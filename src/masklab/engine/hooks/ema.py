"""Exponential moving average of the weights, swapped in for evaluation."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from masklab.config.registries import HOOKS
from masklab.engine.distributed import unwrap
from masklab.engine.hooks.base import Hook
from masklab.errors import ConfigError

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer


@HOOKS.register()
class EMAHook(Hook):
    """Keeps ``ema = (1 - m) * ema + m * param`` every ``interval`` iterations.

    ``m`` is the weight of the *current* parameters (MMEngine's convention; small, e.g. 0.0002),
    not a decay: a value above 0.5 is refused, since it is almost surely a decay written here.
    Validation runs on the average, and checkpoints keep it beside the raw weights: evaluation,
    inference and export of a checkpoint load the average; resume restores both.

    With ``warmup`` W > 0 the momentum of the n-th update (n from 0) is ``max(m, W / (W + n))``:
    the first update copies the weights and early averages are not dominated by the random
    initialisation. Buffers (BatchNorm statistics) are copied, not averaged.

    Priority 30: after the NaN guard (never average a bad step) and before evaluation and
    checkpointing, which both use the updated average.

    Args:
        momentum: weight of the current parameters in each update (small: slow average).
        interval: iterations between updates.
        warmup: updates over which the momentum decays from 1 to ``momentum`` (0: none).
    """

    priority = 30
    payload_key = "ema"

    def __init__(self, momentum: float = 0.0002, interval: int = 1, warmup: int = 0) -> None:
        if not 0.0 < momentum <= 0.5:
            raise ConfigError(
                f"EMA momentum {momentum} (train.ema.momentum): expected 0 < momentum <= 0.5, the weight of the current "
                "parameters in each update (MMEngine's convention: 0.0002 averages like a decay of 0.9998); "
                "for a decay d write momentum: 1 - d"
            )
        if interval < 1 or warmup < 0:
            raise ConfigError(f"EMAHook: expected interval >= 1 and warmup >= 0; got {interval}, {warmup}")
        self.momentum = momentum
        self.interval = interval
        self.warmup = warmup
        self.updates = 0
        self.ema: nn.Module | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None

    def _ensure(self, trainer: Trainer) -> nn.Module:
        if self.ema is None:
            self.ema = copy.deepcopy(unwrap(trainer.model)).eval()
            self.ema.requires_grad_(False)
            if self._pending is not None:
                self._load(self._pending)
                self._pending = None
        return self.ema

    def before_run(self, trainer: Trainer) -> None:
        self._ensure(trainer)

    def current_momentum(self) -> float:
        """Momentum the next update uses."""
        if self.warmup == 0:
            return self.momentum
        return max(self.momentum, self.warmup / (self.warmup + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        assert self.ema is not None
        m = self.current_momentum()
        src = unwrap(model).state_dict()
        averaged: list[torch.Tensor] = []
        current: list[torch.Tensor] = []
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(value)
                current.append(src[name].detach().to(value.dtype))
            else:
                value.copy_(src[name])
        if averaged:  # one fused update over every tensor (a few launches on CUDA, not one per tensor)
            torch._foreach_lerp_(averaged, current, m)
        self.updates += 1

    def after_train_iter(self, trainer: Trainer) -> None:
        self._ensure(trainer)
        if trainer.iter % self.interval == 0:
            self.update(trainer.model)

    def before_val(self, trainer: Trainer) -> None:
        ema = self._ensure(trainer)
        model = unwrap(trainer.model)
        self._backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ema.state_dict())

    def after_val(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self._backup is not None:
            unwrap(trainer.model).load_state_dict(self._backup)
            self._backup = None

    def state_dict(self) -> dict[str, Any] | None:
        if self.ema is None:
            return None
        return {"state": self.ema.state_dict(), "updates": self.updates}

    def _load(self, state: dict[str, Any]) -> None:
        assert self.ema is not None
        self.ema.load_state_dict(state["state"])
        self.updates = int(state["updates"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The copy is made from the model at before_run; until then keep the state aside.
        if self.ema is None:
            self._pending = state
            self.updates = int(state["updates"])
        else:
            self._load(state)
