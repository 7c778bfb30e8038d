"""MAL's learning-rate curve: per-sample LR, linear warmup from 0, then half a cosine to ``min_lr_rate``.

The engine's :class:`~masklab.engine.schedules.IterScheduler` takes any ``Callable[[int], float]``
as its decay; :func:`mal_decay` builds one (use it with ``min_lr=0`` and ``warmup_iters=0`` there,
since the warmup and the floor are already inside this curve).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from masklab.errors import ConfigError


def per_sample_lr(lr: float, total_batch_size: int) -> float:
    """MAL states ``lr`` per sample: the optimiser LR is ``lr`` x (devices x per-device batch)."""
    if total_batch_size < 1:
        raise ConfigError(f"train.batch_size: expected a total batch size >= 1, got {total_batch_size}")
    return lr * total_batch_size


def mal_lr_factor(
    iteration: int, warmup_iters: int, max_iters: int, min_lr_rate: float, num_wave: float = 1.0
) -> float:
    """LR factor (relative to the peak LR) at 0-based ``iteration``.

    ``iteration / warmup_iters`` during warmup; afterwards
    ``min_lr_rate + (1 - min_lr_rate) * (1 + cos(pi * num_wave * p)) / 2`` with ``p`` the fraction of
    the post-warmup iterations done (clamped to 1), so the curve ends at ``min_lr_rate``.
    """
    if iteration < warmup_iters:
        return iteration / warmup_iters
    span = max(max_iters - warmup_iters, 1)
    progress = min((iteration - warmup_iters) / span, 1.0)
    return min_lr_rate + (1.0 - min_lr_rate) * 0.5 * (1.0 + math.cos(math.pi * progress * num_wave))


def mal_decay(
    warmup_iters: int, max_iters: int, min_lr_rate: float = 0.2, num_wave: float = 1.0
) -> Callable[[int], float]:
    """:func:`mal_lr_factor` bound to a schedule, as the engine's ``decay`` callable."""
    if warmup_iters < 0 or max_iters <= 0 or warmup_iters > max_iters:
        raise ConfigError(
            f"train: expected 0 <= warmup_iters <= max_iters and max_iters > 0, got {warmup_iters}, {max_iters}"
        )
    if not 0.0 <= min_lr_rate <= 1.0:
        raise ConfigError(f"train.min_lr_rate: expected a value in [0, 1], got {min_lr_rate}")
    return partial(
        mal_lr_factor,
        warmup_iters=warmup_iters,
        max_iters=max_iters,
        min_lr_rate=min_lr_rate,
        num_wave=num_wave,
    )
