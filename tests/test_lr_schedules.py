"""fairseq's LR schedules against fairseq's own numbers (../shared/fixtures/fairseq-optim)."""

import dataclasses
import json
import math

import pytest
import torch

from adaptive_lm_ds.optim.config import OptimConfig
from adaptive_lm_ds.optim.lr_schedules import (
    CosineSchedule,
    FixedSchedule,
    InverseSqrtSchedule,
    ScheduleConfigError,
    UpdateLRScheduler,
    build_schedule,
    should_stop_for_min_lr,
)


def _section(fixture_dir, name):
    return json.loads((fixture_dir / "expected.json").read_text())[name]


def _cosine_from(config):
    return CosineSchedule(
        lr=config["lr"][0],
        warmup_updates=config["warmup_updates"],
        warmup_init_lr=config["warmup_init_lr"],
        min_lr=config["min_lr"],
        t_mult=config["t_mult"],
        lr_period_updates=config["lr_period_updates"],
        lr_shrink=config["lr_shrink"],
        max_update=config["max_update"],
    )


def _assert_all_close(schedule, lr_at_update):
    """Relative 1e-12; an expected exact zero (underflow) must be an exact zero."""
    mismatches = []
    for update, expected in lr_at_update.items():
        got = schedule.lr_at(int(update))
        ok = got == 0.0 if expected == 0.0 else math.isclose(got, expected, rel_tol=1e-12, abs_tol=0.0)
        if not ok:
            mismatches.append((update, got, expected))
    assert not mismatches, mismatches
    assert len(lr_at_update) > 20


def test_cosine_matches_fairseq_on_the_wiki103_recipe(fairseq_optim_fixture):
    section = _section(fairseq_optim_fixture, "cosine_wiki103_recipe")
    _assert_all_close(_cosine_from(section["config"]), section["lr_at_update"])


def test_cosine_matches_fairseq_without_restarts_down_to_subnormals(fairseq_optim_fixture):
    section = _section(fairseq_optim_fixture, "cosine_no_restart_variant")
    values = section["lr_at_update"]
    assert min(v for v in values.values() if v > 0) < 1e-300  # the fixture does reach subnormals
    _assert_all_close(_cosine_from(section["config"]), values)


def test_inverse_sqrt_matches_fairseq(fairseq_optim_fixture):
    section = _section(fairseq_optim_fixture, "inverse_sqrt")
    config = section["config"]
    schedule = InverseSqrtSchedule(
        lr=config["lr"][0], warmup_updates=config["warmup_updates"], warmup_init_lr=config["warmup_init_lr"]
    )
    _assert_all_close(schedule, section["lr_at_update"])


def test_inverse_sqrt_warmup_from_zero_by_default():
    schedule = InverseSqrtSchedule(lr=0.25, warmup_updates=4)
    assert [schedule.lr_at(k) for k in range(5)] == [0.0, 0.0625, 0.125, 0.1875, 0.25]
    assert schedule.lr_at(16) == 0.125


def test_inverse_sqrt_rejects_zero_warmup():
    with pytest.raises(ScheduleConfigError, match="--warmup-updates must be >= 1"):
        InverseSqrtSchedule(lr=0.25, warmup_updates=0)


def test_fixed_schedule_warms_up_linearly_then_holds():
    schedule = FixedSchedule(lr=0.5, warmup_updates=4)
    assert [schedule.lr_at(k) for k in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]


def test_cosine_rejects_lr_not_above_min_lr():
    with pytest.raises(ScheduleConfigError, match="--min-lr"):
        CosineSchedule(lr=1e-4, min_lr=1e-4, lr_period_updates=10)


def test_cosine_needs_a_period_or_max_update():
    with pytest.raises(ScheduleConfigError, match="--lr-period-updates"):
        CosineSchedule(lr=1.0, warmup_updates=10, lr_period_updates=-1, max_update=10)


def test_stop_min_lr_triggers_at_or_below_the_threshold():
    assert should_stop_for_min_lr(1e-9, 1e-9)
    assert should_stop_for_min_lr(5e-10, 1e-9)
    assert not should_stop_for_min_lr(2e-9, 1e-9)
    assert not should_stop_for_min_lr(0.0, -1.0)  # fairseq's default disables it


def _optimizer(n_groups=2):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(n_groups)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=123.0)


def test_scheduler_sets_lr_at_zero_then_after_each_step():
    schedule = CosineSchedule(lr=1.0, warmup_updates=3, warmup_init_lr=1e-7, min_lr=1e-4, lr_period_updates=5)
    optimizer = _optimizer()
    scheduler = UpdateLRScheduler(optimizer, schedule)
    seen = [[g["lr"] for g in optimizer.param_groups]]
    for _ in range(7):
        scheduler.step()
        seen.append([g["lr"] for g in optimizer.param_groups])
    assert seen == [[schedule.lr_at(k)] * 2 for k in range(8)]
    assert scheduler.get_last_lr() == [schedule.lr_at(7)] * 2


def test_scheduler_state_dict_round_trips():
    schedule = InverseSqrtSchedule(lr=5e-4, warmup_updates=4, warmup_init_lr=1e-7)
    first = UpdateLRScheduler(_optimizer(), schedule)
    for _ in range(6):
        first.step()
    optimizer = _optimizer()
    resumed = UpdateLRScheduler(optimizer, schedule)
    resumed.load_state_dict(first.state_dict())
    assert resumed.num_updates == 6
    assert [g["lr"] for g in optimizer.param_groups] == [schedule.lr_at(6)] * 2
    resumed.step()
    first.step()
    assert resumed.get_last_lr() == first.get_last_lr()


def test_scheduler_rejects_foreign_state():
    with pytest.raises(ScheduleConfigError, match="num_updates"):
        UpdateLRScheduler(_optimizer(), FixedSchedule(lr=1.0)).load_state_dict({"last_epoch": 3})


def test_build_schedule_takes_every_setting_from_the_optim_section():
    optim = OptimConfig(lr=0.5, warmup_updates=3, warmup_init_lr=1e-3, min_lr=1e-2, t_mult=1.5,
                        lr_period_updates=7, lr_shrink=0.5)  # fmt: skip
    cosine = CosineSchedule(lr=0.5, warmup_updates=3, warmup_init_lr=1e-3, min_lr=1e-2, t_mult=1.5,
                            lr_period_updates=7, lr_shrink=0.5, max_update=20)  # fmt: skip
    assert build_schedule(optim, max_update=20) == cosine
    inverse_sqrt = dataclasses.replace(optim, lr_scheduler="inverse_sqrt")
    assert build_schedule(inverse_sqrt, 20) == InverseSqrtSchedule(lr=0.5, warmup_updates=3, warmup_init_lr=1e-3)
    assert build_schedule(dataclasses.replace(optim, lr_scheduler="fixed"), 20) == FixedSchedule(
        lr=0.5, warmup_updates=3
    )
    with pytest.raises(ScheduleConfigError, match="choose one of cosine, inverse_sqrt, fixed"):
        build_schedule(dataclasses.replace(optim, lr_scheduler="linear"), 20)
