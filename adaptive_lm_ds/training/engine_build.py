"""The one place a DeepSpeed engine is assembled: training, every benchmark and the layout writer call it.

So a benchmark always times the product's engine: the same optimizer parameter groups, the same
DeepSpeed config completion (:class:`~adaptive_lm_ds.training.ds_config.DeepSpeedPlan`), the same
adaptations of DeepSpeed (:mod:`adaptive_lm_ds.deepspeed_compat`) and the same :class:`Stepper`.
"""

from __future__ import annotations

from dataclasses import dataclass

import deepspeed
import torch

from adaptive_lm_ds import deepspeed_compat, parallel
from adaptive_lm_ds.checkpoint.safe_files import install as install_safe_checkpoint_engine
from adaptive_lm_ds.optim.config import OptimConfig
from adaptive_lm_ds.optim.lr_schedules import UpdateLRScheduler, build_schedule
from adaptive_lm_ds.optim.optimizers import bounded_param_groups, build_optimizer
from adaptive_lm_ds.training.ds_config import DeepSpeedPlan
from adaptive_lm_ds.training.engine import Stepper, clip_fp32_grad_norm


@dataclass
class BuiltEngine:
    engine: deepspeed.DeepSpeedEngine  # a PipelineEngine when PP > 1
    stepper: Stepper  # runs updates and evaluations on ``engine``
    scheduler: UpdateLRScheduler | None  # drives the lr per update; None when built without ``max_update``


def build_engine(
    module: torch.nn.Module, optim: OptimConfig, plan: DeepSpeedPlan, *, packed: bool, max_update: int | None = None
) -> BuiltEngine:
    """The DeepSpeed engine over ``module`` (from ``build_module``, in the current layout) and its stepper.

    fairseq's optimizer ``optim`` (in bounded parameter groups under ZeRO-1/2, whose step materialises one
    group's fp32 gradient at a time), the lr schedule when ``max_update`` is given, ``plan.config`` to
    DeepSpeed, then every adaptation: weights-only checkpoint files, the fp32 engine's gradient norm, no
    flat-buffer copy of the gradients when there is nothing to all-reduce.
    """
    deepspeed_compat.check_supported()
    dims = parallel.current()
    params = list(module.parameters())
    if plan.zero_stage in (1, 2):
        params = bounded_param_groups(params)
    optimizer = build_optimizer(optim, params)
    scheduler = None if max_update is None else UpdateLRScheduler(optimizer, build_schedule(optim, max_update))
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=plan.config, mpu=dims.deepspeed_mpu,
        dist_init_required=False,
    )  # fmt: skip
    deepspeed_compat.check_engine(engine)
    install_safe_checkpoint_engine(engine)  # every checkpoint file DeepSpeed opens is unpickled weights-only
    if dims.dp == 1 and dims.pp == 1 and plan.zero_stage == 0:
        deepspeed_compat.skip_backward_allreduce(engine)
    trained = [p for p in engine.module.parameters() if p.requires_grad]
    deepspeed_compat.keep_fp32_grad_norm(engine, lambda: clip_fp32_grad_norm(engine, trained))
    return BuiltEngine(engine, Stepper(engine, packed=packed), scheduler)
