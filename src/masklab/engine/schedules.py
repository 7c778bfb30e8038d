"""Iteration-based learning-rate schedules: linear warmup, then poly / cosine / step / constant.

The scheduler sets, before optimiser step ``t`` (0-based),
``lr_g(t) = warmup(t) * (min_lr + (base_g - min_lr) * decay(t))`` for every group ``g``, where
``base_g`` is the group's initial LR (its ``lr_mult`` already applied) and
``warmup(t) = warmup_ratio + (1 - warmup_ratio) * t / warmup_iters`` for ``t < warmup_iters``
(1 afterwards). Decays, with ``T = max_iters``:

* poly: ``(1 - t / T) ** power``
* cosine: ``(1 + cos(pi * t / T)) / 2``
* step: ``gamma ** (number of milestones <= t)``
* constant: ``1``

This is mmcv 0.x's ``PolyLrUpdaterHook`` / ``CosineAnnealingLrUpdaterHook`` with ``warmup='linear'``
(MMSeg 0.x): the decay runs over the whole run from ``t = 0`` and the warm-up multiplies it.
``decay_after_warmup=True`` gives MMSeg 1.x's ``[LinearLR(end=W), PolyLR(begin=W, end=T)]``
instead: ``decay`` is evaluated at ``t - W`` over ``T - W`` iterations (1 during the warm-up).

A family with its own curve passes any ``Callable[[int], float]`` as ``decay`` (e.g. MAL's
warmup + half-cosine to ``min_lr_rate``); then ``min_lr=0`` and ``warmup_iters=0`` give
``lr_g(t) = base_g * decay(t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from masklab.errors import ConfigError

Decay = Callable[[int], float]


def poly_decay(max_iters: int, power: float = 1.0) -> Decay:
    """``(1 - t / max_iters) ** power`` (0 after the end)."""
    if power <= 0:  # a rising LR, then 0 ** -p at the last iteration
        raise ConfigError(f"schedule.power: expected > 0, got {power}")
    return lambda t: max(0.0, 1.0 - t / max_iters) ** power


def cosine_decay(max_iters: int) -> Decay:
    """Half a cosine from 1 at ``t=0`` to 0 at ``t=max_iters``."""
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, max_iters) / max_iters))


def step_decay(milestones: Sequence[int], gamma: float = 0.1) -> Decay:
    """``gamma ** k`` where ``k`` counts the milestones already reached."""
    ms = sorted(int(m) for m in milestones)
    return lambda t: gamma ** sum(1 for m in ms if t >= m)


def constant_decay() -> Decay:
    """Always 1."""
    return lambda t: 1.0


def _after(decay: Decay, start: int) -> Decay:
    """``decay`` delayed to begin at iteration ``start`` (1 before it)."""
    return lambda t: decay(max(0, t - start))


class IterScheduler:
    """Sets each param group's LR per iteration; ``state_dict`` makes it resumable.

    Args:
        optimizer: its groups' current ``lr`` (or ``initial_lr`` when resuming) is the base LR.
        decay: factor curve over iterations (see module docstring).
        min_lr: absolute floor the decay moves towards (poly/cosine).
        warmup_iters: iterations of linear warmup (0: none).
        warmup_ratio: LR factor at ``t=0`` of the warmup.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        decay: Decay,
        *,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.001,
    ) -> None:
        if warmup_iters < 0 or not 0.0 <= warmup_ratio <= 1.0:
            raise ConfigError(
                f"schedule.warmup: expected warmup_iters >= 0 and 0 <= warmup_ratio <= 1, got {warmup_iters}, {warmup_ratio}"
            )
        self.optimizer = optimizer
        self.decay = decay
        self.min_lr = float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_iter = 0
        self._apply()

    def factor(self, t: int, base_lr: float) -> float:
        """LR of a group with initial LR ``base_lr`` at iteration ``t``."""
        warm = 1.0
        if t < self.warmup_iters:
            warm = self.warmup_ratio + (1.0 - self.warmup_ratio) * t / self.warmup_iters
        return warm * (self.min_lr + (base_lr - self.min_lr) * float(self.decay(t)))

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.factor(self.last_iter, base)

    def step(self) -> None:
        """Advance one iteration and set the LR for it."""
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Each group's current LR."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Position and base LRs (the curve itself is rebuilt from the config)."""
        return {"last_iter": self.last_iter, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position."""
        self.last_iter = int(state["last_iter"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str | Decay,
    max_iters: int,
    *,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.001,
    power: float = 1.0,
    min_lr: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    decay_after_warmup: bool = False,
) -> IterScheduler:
    """An :class:`IterScheduler` for ``kind`` in ``poly``, ``cosine``, ``step``, ``constant`` or a decay callable.

    ``decay_after_warmup`` (poly and cosine): the decay starts when the warm-up ends and spans the
    remaining ``max_iters - warmup_iters`` iterations (MMSeg 1.x); default: it spans the whole run
    from iteration 0, under the warm-up factor (MMSeg 0.x). See the module docstring.
    """
    span = max_iters - warmup_iters if decay_after_warmup else max_iters
    if decay_after_warmup and (kind not in ("poly", "cosine") or span <= 0):
        raise ConfigError(
            "schedule.decay_after_warmup: needs the poly or cosine policy and warmup_iters < max_iters "
            f"(got {kind!r}, warmup_iters {warmup_iters}, max_iters {max_iters})"
        )
    if callable(kind):
        decay = kind
    elif kind == "poly":
        decay = poly_decay(span, power)
    elif kind == "cosine":
        decay = cosine_decay(span)
    elif kind == "step":
        if not milestones:
            raise ConfigError("schedule.milestones: the step schedule needs at least one milestone")
        decay = step_decay(milestones, gamma)
    elif kind == "constant":
        decay = constant_decay()
    else:
        raise ConfigError(
            f"schedule.type: unknown schedule {kind!r}; expected poly, cosine, step or constant"
        )
    if max_iters <= 0:
        raise ConfigError(f"schedule.max_iters: must be positive, got {max_iters}")
    if decay_after_warmup and warmup_iters > 0:
        decay = _after(decay, warmup_iters)
    return IterScheduler(
        optimizer, decay, min_lr=min_lr, warmup_iters=warmup_iters, warmup_ratio=warmup_ratio
    )
