"""An applied update's numbers: pending on the device, then the record its subscribers receive.

The step reads no metric back (:class:`~adaptive_lm_ds.training.engine.StepResult`); the trainer keeps each
applied update as a :class:`PendingUpdate` and reads a log interval's worth in one transfer
(:func:`~adaptive_lm_ds.training.engine.read_step_results`), then hands out an :class:`UpdateRecord` per update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_lm_ds import host_memory
from adaptive_lm_ds.training.engine import StepResult


@dataclass(frozen=True)
class UpdateRecord:
    """One applied update, as every subscriber of :attr:`Trainer.on_update` receives it (the logger is one).

    Records arrive in update order when the trainer reads its pending updates back from the device: at
    each log interval, and before validation, a save, a skipped update and the end of the run.
    """

    update: int  # 1-based count of applied updates
    loss_sum: float  # nats, summed over the update's target tokens on all DP ranks
    ntokens: int
    gnorm: float  # global gradient norm before clipping
    lr: float  # the scheduler's lr once this update is applied (what the log shows)
    epoch: int  # 1-based
    extra: dict[str, float]  # logged scalars: bsz, step_time, memory_gb, tflops_per_rank, loss_scale, mfu, clip


@dataclass(frozen=True)
class PendingUpdate:
    """An applied update whose loss, token count and gradient norm are still device scalars (``result``);
    the host numbers beside them were taken when it ran."""

    update: int
    result: StepResult
    step_time: float
    lr: float
    epoch: int
    memory_gb: float


def memory_gb() -> float:
    """Peak accelerator memory, or the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return host_memory.peak_rss_bytes() / 2**30
