"""The optimisation section of a training config: criterion, optimiser, clipping and LR schedule.

Its defaults are the paper's fairseq recipe for WikiText-103 (Baevski & Auli 2019: NAG, lr 1.0,
momentum 0.99, clip 0.1, cosine with warmup 16000 from 1e-7), so a recipe (training/recipes.py) only
names what differs. Each field is one ``--flag`` of the training programs (training/config.py builds the
parser from the fields; :func:`adaptive_lm_ds.cli.flag` carries the help). It lives here, beside the
optimisers and schedules that read it, so ``optim/`` never imports the training package.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from adaptive_lm_ds.cli import flag as _f
from adaptive_lm_ds.layers.adaptive_softmax import CRITERIA
from adaptive_lm_ds.optim.lr_schedules import SCHEDULES
from adaptive_lm_ds.optim.optimizers import OPTIMIZER_NAMES


def _betas(text: str) -> tuple[float, float]:
    """fairseq's ``--adam-betas '(0.9, 0.98)'`` (brackets optional) -> ``(0.9, 0.98)``: parsed once, here."""
    try:
        beta1, beta2 = (float(v) for v in text.strip().strip("()[]").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two betas; write them as '(0.9, 0.98)'") from None
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise argparse.ArgumentTypeError(f"{text!r}: each beta must be in [0, 1)")
    return beta1, beta2


@dataclass
class OptimConfig:
    criterion: str = _f(
        "nll",
        "training and validation loss: nll = exact negative log-likelihood of every target; adaptive_loss "
        "= fairseq's criterion of that name (also drops the tail term of targets whose tail-local index equals "
        "the padding index, ids cutoff_i + 1; docs/interop.md)",
        choices=CRITERIA,
    )
    optimizer: str = _f("nag", "optimizer", choices=OPTIMIZER_NAMES)
    lr: float = _f(1.0, "peak learning rate")
    momentum: float = _f(0.99, "NAG momentum")
    weight_decay: float = _f(0.0, "weight decay")
    adam_betas: tuple[float, float] = _f(
        (0.9, 0.999), "Adam betas, written as fairseq does, e.g. '(0.9, 0.98)' (default: fairseq's)", type=_betas
    )
    adam_eps: float = _f(1e-8, "Adam epsilon (fairseq's default)")
    clip_norm: float = _f(0.1, "clip gradients to this global norm (0: off)")
    lr_scheduler: str = _f("cosine", "learning-rate schedule", choices=tuple(SCHEDULES))
    warmup_updates: int = _f(16000, "linear warmup updates")
    warmup_init_lr: float = _f(1e-7, "lr at update 0 (-1: start at --min-lr)")
    min_lr: float = _f(1e-4, "cosine: minimum lr of the first period")
    t_mult: float = _f(2.0, "cosine: factor by which each period is longer than the previous")
    lr_period_updates: int = _f(270000, "cosine: updates in the first period (-1: max-update - warmup)")
    lr_shrink: float = _f(0.75, "cosine: factor applied to lr and min-lr at each restart")
    stop_min_lr: float = _f(1e-9, "stop training once the lr falls to this value")
