"""Learning-rate schedules by hand."""

from __future__ import annotations

import math

import pytest

from fr_dist.config import OptimConfig, ScheduleConfig
from fr_dist.optim import make_lr


def test_step_schedule_by_hand():
    optim = OptimConfig(lr=0.1, schedule=ScheduleConfig(name="step", milestones=[2, 3], gamma=0.1))
    lr = make_lr(optim, steps_per_epoch=10, total_steps=40)
    assert [lr(b) for b in (0, 19, 20, 29, 30, 39)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_and_onecycle_by_hand():
    cos = make_lr(OptimConfig(lr=1.0, schedule=ScheduleConfig(name="cosine")), 10, 100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    one = make_lr(OptimConfig(lr=1.0, schedule=ScheduleConfig(name="onecycle")), 10, 100)
    assert one(0) == pytest.approx(1 / 30) and one(29) == pytest.approx(1.0)
    assert one(65) == pytest.approx(0.5 * (1 + math.cos(math.pi * 35 / 70)))
