"""Each schedule's LR at known iterations, computed here from its formula."""

from __future__ import annotations

import math

import pytest
import torch

from masklab.engine.schedules import build_scheduler
from masklab.errors import ConfigError


def optimizer(lrs: tuple[float, ...] = (0.1,)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def lrs_over(sched, n: int) -> list[list[float]]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr())
        sched.step()
    return out


def test_poly_with_min_lr_and_group_multipliers() -> None:
    opt = optimizer((0.1, 1.0))  # second group: lr_mult 10
    sched = build_scheduler(opt, "poly", 10, power=0.9, min_lr=1e-4)
    got = lrs_over(sched, 11)
    for t, (a, b) in enumerate(got):
        f = (1 - t / 10) ** 0.9
        assert a == pytest.approx(1e-4 + (0.1 - 1e-4) * f)
        assert b == pytest.approx(1e-4 + (1.0 - 1e-4) * f)
    assert got[10][0] == pytest.approx(1e-4)


def test_cosine() -> None:
    sched = build_scheduler(optimizer(), "cosine", 8, min_lr=0.01)
    for t, (lr,) in enumerate(lrs_over(sched, 9)):
        assert lr == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 8)))


def test_step() -> None:
    sched = build_scheduler(optimizer(), "step", 10, milestones=[3, 6], gamma=0.5)
    got = [lr for (lr,) in lrs_over(sched, 8)]
    assert got == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_linear_warmup_then_constant() -> None:
    sched = build_scheduler(optimizer(), "constant", 10, warmup_iters=4, warmup_ratio=0.2)
    got = [lr for (lr,) in lrs_over(sched, 6)]
    expected = [0.1 * (0.2 + 0.8 * t / 4) for t in range(4)] + [0.1, 0.1]
    assert got == pytest.approx(expected)


def test_custom_factor_and_state_dict() -> None:
    # A family curve (MAL-like): linear warmup over 2 iters then half-cosine to 0.2x over 8.
    def mal(t: int) -> float:
        if t < 2:
            return t / 2
        return 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 8))

    opt = optimizer()
    sched = build_scheduler(opt, mal, 10)
    got = [lr for (lr,) in lrs_over(sched, 10)]
    assert got == pytest.approx([0.1 * mal(t) for t in range(10)])
    state = sched.state_dict()
    fresh = build_scheduler(optimizer(), mal, 10)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_unknown_schedule() -> None:
    with pytest.raises(ConfigError, match="linear"):
        build_scheduler(optimizer(), "linear", 10)
    with pytest.raises(ConfigError, match="milestone"):
        build_scheduler(optimizer(), "step", 10)


def test_non_positive_power_is_refused() -> None:
    # power -1 raised the LR every step, then 0 ** -1 raised ZeroDivisionError at the last one.
    for power in (-1.0, 0.0):
        with pytest.raises(ConfigError, match=rf"^schedule\.power: expected > 0, got {power}$"):
            build_scheduler(optimizer(), "poly", 10, power=power)


def test_decay_after_warmup_is_mmseg_1x() -> None:
    """Default: mmcv 0.x (poly over the whole run, times the warm-up factor). Opt-in: MMSeg 1.x's
    LinearLR(end=W) then PolyLR(begin=W, end=T): the decay spans T - W iterations from W."""
    T, W, r, p, base = 100, 20, 0.1, 0.9, 1.0
    old = build_scheduler(optimizer((base,)), "poly", T, warmup_iters=W, warmup_ratio=r, power=p)
    new = build_scheduler(
        optimizer((base,)), "poly", T, warmup_iters=W, warmup_ratio=r, power=p, decay_after_warmup=True
    )
    for t in (0, 10, 20, 60, 99):
        warm = r + (1 - r) * t / W if t < W else 1.0
        assert old.factor(t, base) == pytest.approx(warm * (1 - t / T) ** p)
        assert new.factor(t, base) == pytest.approx(warm if t < W else (1 - (t - W) / (T - W)) ** p)
    assert old.factor(W, base) / new.factor(W, base) == pytest.approx(0.8**p)  # -18 % at the end of warm-up
    with pytest.raises(ConfigError, match="decay_after_warmup"):
        build_scheduler(optimizer(), "step", 10, milestones=[5], decay_after_warmup=True)
