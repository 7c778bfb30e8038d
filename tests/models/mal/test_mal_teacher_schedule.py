"""EMA teacher update and the MAL learning-rate curve."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from masklab.errors import ConfigError
from masklab.models.mal.schedule import mal_decay, mal_lr_factor, per_sample_lr
from masklab.models.mal.teacher import EmaTeacher


def test_teacher_starts_as_a_copy_and_updates_by_the_formula() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = EmaTeacher(student, momentum=0.9)
    for t, s in zip(teacher.network.parameters(), student.parameters(), strict=True):
        assert t.equal(s) and t.data_ptr() != s.data_ptr() and not t.requires_grad
    before = [p.clone() for p in teacher.network.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student[1].running_mean.fill_(2.5)
    teacher.update(student)
    for t, b, s in zip(teacher.network.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    assert teacher.network[1].running_mean.eq(2.5).all()


def test_teacher_stays_in_eval_mode_and_gives_no_grad() -> None:
    student = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    holder = nn.ModuleDict({"student": student, "teacher": EmaTeacher(student)})
    holder.train()
    assert student.training and not holder["teacher"].network.training
    out = holder["teacher"](torch.ones(3, 2, requires_grad=True))
    assert not out.requires_grad


def test_lr_factor_warmup_then_half_cosine_to_min() -> None:
    assert mal_lr_factor(0, 10, 110, 0.2) == 0.0
    assert mal_lr_factor(5, 10, 110, 0.2) == pytest.approx(0.5)
    assert mal_lr_factor(10, 10, 110, 0.2) == pytest.approx(1.0)
    assert mal_lr_factor(60, 10, 110, 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert mal_lr_factor(110, 10, 110, 0.2) == pytest.approx(0.2)
    assert mal_lr_factor(500, 10, 110, 0.2) == pytest.approx(0.2)
    values = [mal_lr_factor(i, 10, 110, 0.2) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_decay_callable_and_per_sample_lr() -> None:
    decay = mal_decay(4, 20, 0.2)
    assert decay(2) == pytest.approx(0.5) and decay(20) == pytest.approx(0.2)
    assert per_sample_lr(1.5e-6, 32) == pytest.approx(4.8e-5)
    with pytest.raises(ConfigError, match="min_lr_rate"):
        mal_decay(4, 20, 1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        per_sample_lr(1e-6, 0)
