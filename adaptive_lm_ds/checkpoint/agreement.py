"""Rank 0 decides, every rank learns the outcome: a value or the one-line error, never a lone failure.

A checkpoint decision that each rank makes alone (which tag to resume, whether its files are
intact, whether pruning worked) can differ between ranks, and a rank that raises while the others
enter a collective leaves them waiting until a timeout. :func:`decided_on_rank0` runs the decision
on rank 0 only and broadcasts ``(value, error line)``; every rank returns the same value or raises
the same :class:`CheckpointError`, marked as raised on every rank
(:func:`~adaptive_lm_ds.errors.raised_on_every_rank`) so the programs print its line once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.errors import UserError, raised_on_every_rank

T = TypeVar("T")


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def decided_on_rank0(decide: Callable[[], T], describe_os_error: Callable[[OSError], str] | None = None) -> T:
    """``decide()`` on rank 0, its result (picklable) or error on every rank.

    A :class:`UserError` keeps its line; an :class:`OSError` becomes ``describe_os_error(e)`` (default:
    its type and first line).
    """
    outcome: list = [None, None]
    if is_rank0():
        try:
            outcome = [decide(), None]
        except UserError as e:
            outcome = [None, str(e)]
        except OSError as e:
            first = (str(e).splitlines() or [""])[0]
            outcome = [None, describe_os_error(e) if describe_os_error else f"{type(e).__name__}: {first}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    value, error = outcome
    if error is not None:
        raise raised_on_every_rank(CheckpointError(error))
    return value
