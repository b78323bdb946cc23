"""fairseq's learning-rate schedules as pure functions of the update number, and a DeepSpeed driver.

Each schedule answers ``lr_at(num_updates)`` with exactly the float fairseq's
``step_update(num_updates)`` returns (same operations in the same order, so values agree to the
last bit, subnormals included). fairseq sets the lr of update 1 to ``lr_at(0)`` at construction
and, after update ``k`` has been applied, the lr of the next update to ``lr_at(k)``;
:class:`UpdateLRScheduler` reproduces that under DeepSpeed, which calls ``lr_scheduler.step()``
after every applied optimizer step (not after skipped fp16-overflow steps, which fairseq does not
count either).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from adaptive_lm_ds.errors import UserError

if TYPE_CHECKING:  # the run's optim section (a type only: optim/config.py imports this module)
    from adaptive_lm_ds.optim.config import OptimConfig


class ScheduleConfigError(UserError, ValueError):
    """A schedule setting that cannot work; the message says which flag to change."""

    same_on_every_rank = True  # follows from the flags alone: every rank raises it, rank 0 prints it


class LRSchedule(Protocol):
    """Anything that maps an update count to a learning rate."""

    def lr_at(self, num_updates: int) -> float: ...


@dataclass(frozen=True)
class CosineSchedule:
    """fairseq ``CosineLRSchedule`` (``--lr-scheduler cosine``): warmup, then cosine periods.

    Warmup is linear from ``warmup_init_lr`` (``< 0`` means: start at ``min_lr``) to ``lr`` over
    ``warmup_updates``. Then period ``i`` lasts ``lr_period_updates * t_mult**i`` updates
    (``lr_period_updates <= 0`` means ``max_update - warmup_updates``) and anneals from
    ``lr * lr_shrink**i`` down to ``min_lr * lr_shrink**i``.
    """

    lr: float
    warmup_updates: int = 0
    warmup_init_lr: float = -1.0
    min_lr: float = 0.0
    t_mult: float = 1.0
    lr_period_updates: float = -1
    lr_shrink: float = 0.1
    max_update: int = 0

    def __post_init__(self) -> None:
        if self.lr <= self.min_lr:
            raise ScheduleConfigError(f"cosine: --lr ({self.lr}) must be larger than --min-lr ({self.min_lr})")
        if self.warmup_updates < 0:
            raise ScheduleConfigError(f"cosine: --warmup-updates must be >= 0, got {self.warmup_updates}")
        if self.lr_period_updates <= 0 and self.max_update - self.warmup_updates <= 0:
            raise ScheduleConfigError("cosine: set --lr-period-updates, or --max-update larger than --warmup-updates")
        if self.t_mult <= 0:
            raise ScheduleConfigError(f"cosine: --t-mult must be > 0, got {self.t_mult}")

    @property
    def initial_lr(self) -> float:
        return self.min_lr if self.warmup_init_lr < 0 else self.warmup_init_lr

    @property
    def period(self) -> float:
        if self.lr_period_updates <= 0:
            return self.max_update - self.warmup_updates
        return self.lr_period_updates

    def lr_at(self, num_updates: int) -> float:
        if num_updates < self.warmup_updates:
            lr_step = (self.lr - self.initial_lr) / self.warmup_updates
            return self.initial_lr + num_updates * lr_step
        period = self.period
        curr_updates = num_updates - self.warmup_updates
        if self.t_mult != 1:
            i = math.floor(math.log(1 - curr_updates / period * (1 - self.t_mult), self.t_mult))
            t_i = self.t_mult**i * period
            t_curr = curr_updates - (1 - self.t_mult**i) / (1 - self.t_mult) * period
        else:
            i = math.floor(curr_updates / period)
            t_i = period
            t_curr = curr_updates - (period * i)
        lr_shrink = self.lr_shrink**i
        min_lr = self.min_lr * lr_shrink
        max_lr = self.lr * lr_shrink
        return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * t_curr / t_i))


@dataclass(frozen=True)
class InverseSqrtSchedule:
    """fairseq ``InverseSquareRootSchedule`` (``--lr-scheduler inverse_sqrt``).

    Linear warmup from ``warmup_init_lr`` (``< 0`` means 0) to ``lr``, then
    ``lr * sqrt(warmup_updates) / sqrt(num_updates)``. The decay is anchored at the end of warmup,
    so ``warmup_updates`` must be >= 1 (fairseq divides by it and fails too).
    """

    lr: float
    warmup_updates: int = 4000
    warmup_init_lr: float = -1.0

    def __post_init__(self) -> None:
        if self.warmup_updates < 1:
            raise ScheduleConfigError(
                f"inverse_sqrt: --warmup-updates must be >= 1 (the decay starts from it), got {self.warmup_updates}"
            )

    @property
    def initial_lr(self) -> float:
        return 0.0 if self.warmup_init_lr < 0 else self.warmup_init_lr

    def lr_at(self, num_updates: int) -> float:
        if num_updates < self.warmup_updates:
            lr_step = (self.lr - self.initial_lr) / self.warmup_updates
            return self.initial_lr + num_updates * lr_step
        decay_factor = self.lr * self.warmup_updates**0.5
        return decay_factor * num_updates**-0.5


@dataclass(frozen=True)
class FixedSchedule:
    """fairseq ``FixedLRSchedule`` restricted to what depends on updates: ``lr``, with an optional
    warmup that scales it by ``(num_updates + 1) / warmup_updates`` (fairseq's per-epoch
    ``--force-anneal``/``--lr-shrink`` is not modelled: this project counts updates, not epochs)."""

    lr: float
    warmup_updates: int = 0

    def lr_at(self, num_updates: int) -> float:
        if self.warmup_updates > 0 and num_updates < self.warmup_updates:
            return (num_updates + 1) / float(self.warmup_updates) * self.lr
        return self.lr


# --lr-scheduler's choices. Each schedule's fields are fairseq's flag names, so :func:`build_schedule`
# fills them from the optim section by name.
SCHEDULES: dict[str, type] = {"cosine": CosineSchedule, "inverse_sqrt": InverseSqrtSchedule, "fixed": FixedSchedule}


def build_schedule(cfg: OptimConfig, max_update: int) -> LRSchedule:
    """The schedule ``--lr-scheduler`` names, its settings read from the optim section (and ``--max-update``)."""
    if cfg.lr_scheduler not in SCHEDULES:
        raise ScheduleConfigError(f"unknown --lr-scheduler {cfg.lr_scheduler!r}: choose one of {', '.join(SCHEDULES)}")
    schedule = SCHEDULES[cfg.lr_scheduler]
    settings = {
        f.name: max_update if f.name == "max_update" else getattr(cfg, f.name) for f in dataclasses.fields(schedule)
    }
    return schedule(**settings)


def should_stop_for_min_lr(lr: float, stop_min_lr: float) -> bool:
    """fairseq's ``--stop-min-lr``: training stops once the current lr is <= ``stop_min_lr``.

    fairseq's default (-1) never triggers. fairseq checks this between epochs in its main loop;
    a per-update trainer may call it after every scheduler step.
    """
    return lr <= stop_min_lr


class UpdateLRScheduler:
    """Drives an optimizer's lr from a schedule, as DeepSpeed's client ``lr_scheduler``.

    Sets every param group's ``lr`` to ``schedule.lr_at(num_updates)``: ``lr_at(start)`` at
    construction, then ``lr_at(k)`` after the k-th :meth:`step`. DeepSpeed calls ``step()`` once per
    applied optimizer step, reads ``get_last_lr``-style values through the optimizer, and saves /
    loads :meth:`state_dict` with its checkpoints. Pass either the instance or
    ``lambda opt: UpdateLRScheduler(opt, schedule)`` to ``deepspeed.initialize(lr_scheduler=...)``.
    Deliberately not callable, so DeepSpeed does not mistake it for a factory.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule, num_updates: int = 0):
        self.optimizer = optimizer
        self.schedule = schedule
        self.num_updates = int(num_updates)
        self._apply()

    def _apply(self) -> None:
        lr = self.schedule.lr_at(self.num_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)

    def step(self) -> None:
        """One optimizer update has been applied: set the lr for the next one."""
        self.num_updates += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def get_lr(self) -> list[float]:
        return self.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        """The update count (the schedule itself comes from the command line on resume, as in
        fairseq), plus the schedule's settings for reference."""
        settings = asdict(self.schedule) if hasattr(self.schedule, "__dataclass_fields__") else {}
        return {"num_updates": self.num_updates, "schedule": type(self.schedule).__name__, "settings": settings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "num_updates" not in state:
            raise ScheduleConfigError("lr scheduler state has no 'num_updates': the checkpoint is not ours")
        self.num_updates = int(state["num_updates"])
        self._apply()
