"""Optimisers of the fairseq recipes: NAG exactly as fairseq computes it, and Adam/AdamW.

All of them are plain ``torch.optim.Optimizer`` instances, so DeepSpeed accepts them as a client
optimizer (``deepspeed.initialize(optimizer=...)``; ZeRO needs ``"zero_allow_untested_optimizer":
true`` for NAG) and the LR schedulers in :mod:`adaptive_lm_ds.optim.lr_schedules` drive them
through ``param_groups[i]["lr"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from adaptive_lm_ds.errors import UserError

if TYPE_CHECKING:  # the run's optim section (a type only: optim/config.py imports this module)
    from adaptive_lm_ds.optim.config import OptimConfig

OPTIMIZER_NAMES = ("nag", "adam", "adamw")  # --optimizer's choices
_HALF_DTYPES = (torch.float16, torch.bfloat16)
# Param groups a rank's parameters are cut into. DeepSpeed's ZeRO-1/2 step builds the fp32 gradient of
# one param group at a time (a flat copy of the group's gradients, cast to fp32) and frees it after that
# group's update; with all of gbw_huge's 515M parameters per TP rank in one group that transient was
# 2.06 GB of fp32 plus a 1.03 GB bf16 flat copy (BENCHMARKS.md, "Memory at real shapes"). The count is
# fixed, not a size: DeepSpeed all-reduces each group's gradient norm over the model-parallel ranks
# (TP and pipeline stages), which deadlocks unless every rank has the same number of groups.
PARAM_GROUPS = 16


class OptimizerConfigError(UserError, ValueError):
    """An optimiser name or hyper-parameter that cannot work; the message says what to change."""

    same_on_every_rank = True  # follows from the flags alone: every rank raises it, rank 0 prints it


class NAG(torch.optim.Optimizer):
    """Nesterov accelerated gradient in fairseq's formulation (``fairseq/optim/nag.py``).

    fairseq keeps the momentum buffer in units of "lr times gradient" and therefore rescales it by
    ``lr / lr_old`` when the learning rate changes between steps. With ``c = lr / lr_old``, ``m`` the
    momentum, ``wd`` the weight decay and ``g`` the gradient, one step is, in this order::

        p   <- p * (1 - lr * wd)
        p   <- p + m**2 * c * buf - (1 + m) * lr * g
        buf <- m * c * buf - lr * g

    and then ``lr_old <- lr`` (kept in each param group, so it survives ``state_dict`` round
    trips). Like fairseq, the gradient is taken in float32 (``grad.float()``) and the momentum
    buffer is float32 whatever the parameter dtype; fp16/bf16 parameters are updated through an
    fp32 copy. The stored fixture (fairseq on float64 parameters) only matches with this fp32
    gradient path, which is why it is reproduced rather than "fixed".
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ):
        if lr < 0.0:
            raise OptimizerConfigError(f"NAG: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise OptimizerConfigError(f"NAG: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0.0:
            raise OptimizerConfigError(f"NAG: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, lr_old=lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            weight_decay = group["weight_decay"]
            momentum = group["momentum"]
            lr = group["lr"]
            lr_old = group.get("lr_old", lr)
            # fairseq's guard: with lr_old == 0 the correction falls back to lr itself.
            lr_correct = lr / lr_old if lr_old > 0 else lr

            for p in group["params"]:
                if p.grad is None:
                    continue
                p_fp32 = p.float() if p.dtype in _HALF_DTYPES else p
                d_p = p.grad.float()
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(d_p)
                else:
                    # load_state_dict casts state to the parameter dtype; fairseq casts it back.
                    state["momentum_buffer"] = state["momentum_buffer"].to(d_p)
                buf = state["momentum_buffer"]

                if weight_decay != 0:
                    p_fp32.mul_(1 - lr * weight_decay)
                p_fp32.add_(buf, alpha=momentum * momentum * lr_correct)
                p_fp32.add_(d_p, alpha=-(1 + momentum) * lr)
                buf.mul_(momentum * lr_correct).add_(d_p, alpha=-lr)

                if p.dtype in _HALF_DTYPES:
                    p.copy_(p_fp32)

            group["lr_old"] = lr

        return loss


def group_bounds(sizes: list[int], groups: int = PARAM_GROUPS) -> list[tuple[int, int]]:
    """``[start, end)`` index ranges cutting ``sizes`` (tensor element counts, in order) into
    ``min(groups, len(sizes))`` consecutive groups of about equal elements (each at least one tensor)."""
    count = min(groups, len(sizes))
    total = sum(sizes)
    bounds, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        left = count - len(bounds) - 1  # groups still to open after this one
        if left and (acc * count >= total * (len(bounds) + 1) or len(sizes) - i - 1 == left):
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(sizes)))
    return [b for b in bounds if b[1] > b[0]]


def bounded_param_groups(params: list[torch.Tensor], groups: int = PARAM_GROUPS) -> list[dict]:
    """The parameters as :func:`group_bounds` param groups (same hyper-parameters in each).

    The update is the one-group update; only what an optimizer wrapper materialises per group
    (DeepSpeed's flat fp32 gradient) shrinks. For ZeRO-1/2 only: under ZeRO-3 the training run no
    longer matched one process to 1e-5 with 16 groups (tests/test_train_layouts.py, dp2-zero3).
    """
    return [{"params": params[a:b]} for a, b in group_bounds([p.numel() for p in params], groups)]


def build_optimizer(
    cfg: OptimConfig, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The optimiser fairseq's ``--optimizer NAME`` would build, from the run's optim section.

    Reads ``optimizer``, ``lr``, ``weight_decay``, ``momentum`` (NAG), ``adam_betas`` and ``adam_eps``
    (Adam); their defaults are fairseq's and live on :class:`~adaptive_lm_ds.optim.config.OptimConfig`.

    * ``nag``: :class:`NAG`.
    * ``adam``: fairseq's ``FairseqAdam``. Its weight decay is *decoupled* (it does
      ``p -= wd * lr * p`` before the Adam update, "Fixed Weight Decay Regularization in Adam"),
      which is exactly ``torch.optim.AdamW``; with ``weight_decay=0`` it equals ``torch.optim.Adam``.
      So ``adam`` builds ``torch.optim.AdamW`` to keep fairseq's semantics for ``--weight-decay``.
    * ``adamw``: ``torch.optim.AdamW`` (the same maths; the name is accepted for clarity).

    ``params`` may be param groups, e.g. :func:`bounded_param_groups` under DeepSpeed's ZeRO-1/2.
    """
    key = cfg.optimizer.lower()
    if key not in OPTIMIZER_NAMES:
        raise OptimizerConfigError(f"unknown optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZER_NAMES)}")
    if cfg.lr < 0.0:
        raise OptimizerConfigError(f"optimizer {key}: lr must be >= 0, got {cfg.lr}")
    if key == "nag":
        return NAG(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
