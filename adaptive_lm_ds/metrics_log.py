"""Training progress in fairseq's style: a log line per log interval and tensorboard scalars.

The lines go to the ``adaptive_lm_ds.train`` logger, so they carry fairseq's timestamp and level
(adaptive_lm_ds/logs.py).

Losses arrive as sums in nats with their token counts; the logged ``loss`` is fairseq's
``loss_sum / ntokens / ln 2`` (base 2) over the whole interval (token-weighted, not a mean of
per-update means) and ``ppl = 2 ** loss``. Only rank 0 prints or writes event files.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from adaptive_lm_ds.errors import UserError

LOG_FORMATS = ("simple", "json")


class LogConfigError(UserError, ValueError):
    """A logging setting that cannot work; the message says which flag to change."""


def base2_loss(loss_sum_nats: float, ntokens: int) -> float:
    """fairseq's reported loss: nats summed over ``ntokens`` tokens -> bits per token."""
    return loss_sum_nats / ntokens / math.log(2)


def perplexity(loss_base2: float) -> float:
    """``2 ** loss``, saturating to inf like fairseq's ``get_perplexity`` instead of raising."""
    try:
        return 2.0**loss_base2
    except OverflowError:
        return float("inf")


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (days spelled out past 24 h); ``?`` while the rate is unknown."""
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class TrainLogger:
    """Accumulates per-update metrics and emits them every ``log_interval`` updates.

    Call :meth:`update` after every optimizer update with that update's summed loss (nats), token
    count, lr and gradient norm, plus any extra scalars (``bsz``, ``loss_scale``, ``step_time``, ``mfu``,
    ``memory_allocated_gb`` ...). Extras are averaged over the interval, ``lr`` is the latest.
    fairseq's ``wpb`` (target tokens per update), ``num_updates`` and ``wall`` (seconds since this
    logger started) are added to every line.
    Every scalar also goes to tensorboard as ``train/<name>``; :meth:`log_valid` writes
    ``valid/loss`` and ``valid/ppl``; :meth:`write_scalars` writes any dict under any prefix.
    """

    def __init__(
        self,
        log_interval: int = 100,
        log_format: str = "simple",
        max_update: int = 0,
        tensorboard_logdir: str | None = None,
        rank: int = 0,
        start_update: int = 0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.perf_counter,
        time_limit: float = 0.0,
    ):
        if log_format not in LOG_FORMATS:
            raise LogConfigError(f"--log-format {log_format!r} is not supported: use one of {', '.join(LOG_FORMATS)}")
        if log_interval < 1:
            raise LogConfigError(f"--log-interval must be >= 1, got {log_interval}")
        self.log_interval = log_interval
        self.log_format = log_format
        self.max_update = max_update
        self.time_limit = time_limit  # seconds (--stop-time-hours); the ETA never exceeds what is left
        self.is_writer = rank == 0
        self.logger = logger if logger is not None else logging.getLogger("adaptive_lm_ds.train")
        self.clock = clock
        self._start_time = clock()
        self._start_update = start_update
        self._writer = None
        if self.is_writer and tensorboard_logdir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard_logdir))
        self._reset_interval()

    def _reset_interval(self) -> None:
        self._interval_start = self.clock()
        self._loss_sum = 0.0
        self._ntokens = 0
        self._gnorm_sum = 0.0
        self._updates = 0
        self._extra_sums: dict[str, float] = {}

    def eta_seconds(self, num_updates: int) -> float:
        """Remaining updates to ``max_update`` at the mean rate since this logger started (capped by the time limit)."""
        elapsed = self.clock() - self._start_time
        done = num_updates - self._start_update
        if self.max_update <= 0 or done <= 0 or elapsed <= 0:
            return float("nan")
        eta = (self.max_update - num_updates) * elapsed / done
        return min(eta, max(self.time_limit - elapsed, 0.0)) if self.time_limit > 0 else eta

    def update(
        self,
        num_updates: int,
        loss_sum_nats: float,
        ntokens: int,
        lr: float,
        gnorm: float,
        epoch: int = 1,
        **extra: float,
    ) -> dict[str, Any] | None:
        """Record one update; at a log interval boundary emit and return the interval's metrics."""
        self._loss_sum += float(loss_sum_nats)
        self._ntokens += int(ntokens)
        self._gnorm_sum += float(gnorm)
        self._updates += 1
        for name, value in extra.items():
            self._extra_sums[name] = self._extra_sums.get(name, 0.0) + float(value)
        self._lr = lr
        if num_updates % self.log_interval != 0:
            return None
        return self.flush(num_updates, epoch)

    def flush(self, num_updates: int, epoch: int = 1) -> dict[str, Any] | None:
        """Emit whatever the current interval holds (e.g. at the end of training)."""
        if self._updates == 0:
            return None
        elapsed = self.clock() - self._interval_start
        loss = base2_loss(self._loss_sum, self._ntokens) if self._ntokens else float("nan")
        scalars: dict[str, float] = {
            "loss": loss,
            "ppl": perplexity(loss),
            "lr": float(self._lr),
            "gnorm": self._gnorm_sum / self._updates,
            "wps": self._ntokens / elapsed if elapsed > 0 else float("nan"),
            "ups": self._updates / elapsed if elapsed > 0 else float("nan"),
        }
        scalars.update({name: total / self._updates for name, total in self._extra_sums.items()})
        # fairseq's fields: words (target tokens) per update, updates so far, seconds since the start
        scalars.update(wpb=self._ntokens / self._updates, num_updates=num_updates, wall=self.clock() - self._start_time)
        record: dict[str, Any] = {"epoch": epoch, "update": num_updates, **scalars}
        record["eta_s"] = self.eta_seconds(num_updates)
        self._emit(self._format_train(record))
        self.write_scalars("train", scalars, num_updates)
        self._reset_interval()
        return record

    def log_valid(
        self, num_updates: int, loss_sum_nats: float, ntokens: int, epoch: int = 1, **extra: float
    ) -> dict[str, Any]:
        """Validation loss (base 2) and perplexity over ``ntokens`` tokens, printed and written."""
        loss = base2_loss(loss_sum_nats, ntokens)
        scalars = {"loss": loss, "ppl": perplexity(loss), **{k: float(v) for k, v in extra.items()}}
        record: dict[str, Any] = {"epoch": epoch, "update": num_updates, "valid_on": "valid", **scalars}
        if self.log_format == "json":
            self._emit(json.dumps(record))
        else:
            self._emit(f"valid | epoch {epoch:03d} | update {num_updates} | " + _key_values(scalars))
        self.write_scalars("valid", scalars, num_updates)
        return record

    def write_scalars(self, prefix: str, scalars: Mapping[str, float], step: int) -> None:
        """Every ``name: value`` as tensorboard scalar ``<prefix>/<name>`` at ``step`` (rank 0 only)."""
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _format_train(self, record: Mapping[str, Any]) -> str:
        if self.log_format == "json":
            return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
        total = f" / {self.max_update}" if self.max_update > 0 else ""
        body = {k: v for k, v in record.items() if k not in ("epoch", "update", "eta_s")}
        eta = format_eta(record["eta_s"])
        return f"epoch {record['epoch']:03d} | update {record['update']}{total} | {_key_values(body)} | ETA {eta}"

    def _emit(self, line: str) -> None:
        if self.is_writer:
            self.logger.info(line)


def _key_values(scalars: Mapping[str, float]) -> str:
    """``loss=3.142, ppl=8.83, lr=1.25e-05``: 4 significant digits, like fairseq's rounding."""
    return ", ".join(f"{name}={value:.4g}" for name, value in scalars.items())
