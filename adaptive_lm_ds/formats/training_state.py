"""A training state free of any layout: what a resume carries from one TP x PP x DP x ZeRO layout to another.

Every tensor is one-piece (the TP = 1 model's shape, vocabulary padding dropped) and fp32, keyed by its
``AdaptiveLM`` parameter name (a tied tensor under its owner's name only). Values may be lazy
(:class:`~adaptive_lm_ds.formats.streaming.LazyTensors`): a reader makes each tensor when asked, so a
resume streams tensor by tensor. Sources: a DeepSpeed training checkpoint of any layout, a fairseq
training checkpoint. Sinks: a live engine of any layout, a fairseq training checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# the optimizer state each optimizer keeps per parameter (fp32, the parameter's shape)
STATE_KEYS = {"nag": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}


@dataclass
class TrainingState:
    """One-piece fp32 weights and optimizer state, and the counters that place a run in its schedule.

    ``weights[name]``: the fp32 master weight, one-piece shape. ``moments[key][name]``: optimizer state
    ``key`` (one of ``STATE_KEYS[optimizer]``) of parameter ``name``, same shape. ``adam_step``: Adam's
    per-parameter step count (None for NAG). ``lr_old``: NAG's last applied lr (its momentum is kept in
    lr units and rescaled by ``lr / lr_old`` on the next step). ``data``: the data position, in
    samples of the epoch's order (``{"epoch": 0-based, "samples": consumed in that epoch}``) or None to
    start the data anew.
    """

    weights: Mapping[str, torch.Tensor]
    optimizer: str  # "nag" | "adam"
    moments: dict[str, Mapping[str, torch.Tensor]]
    num_updates: int
    adam_step: int | None = None
    lr_old: float | None = None
    data: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific notes, e.g. fairseq's iterator state
