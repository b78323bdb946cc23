"""Load a layout-free :class:`TrainingState` into a live DeepSpeed engine of the current layout.

Each rank makes only its own TP shard of each tensor (:func:`~adaptive_lm_ds.model.sharding.shard_from`; a
lazy state's vocabulary tables are sliced, never made whole) and hands it to the place the engine keeps it:

* ZeRO-1/2 and the bf16 optimizer: DeepSpeed's fragment API (``safe_set_full_fp32_param``,
  ``safe_set_full_optimizer_state``) writes the rank's fragment of the flat fp32 partition and of the base
  optimizer's state over it; the module's (bf16 or fp32) weight is the same value cast;
* ZeRO-3: the DP rank's ``ceil(numel / DP)`` slice of the shard, through ``safe_set_local_*`` and into the
  parameter's own partition (``ds_tensor``);
* ZeRO-0: the module parameters are the masters; ``optimizer.state[param]`` gets the moments.

NAG and Adam create their state lazily on the first step; it is created here (zeros) before the fragments
are linked, so the fragment writes land in the tensors the next step updates. NAG's ``lr_old`` goes into
every param group, Adam's step count into every state.
"""

from __future__ import annotations

import torch
from deepspeed.utils import (
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
    safe_set_local_fp32_param,
    safe_set_local_optimizer_state,
)

from adaptive_lm_ds import deepspeed_compat, parallel
from adaptive_lm_ds.checkpoint import CheckpointError
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.formats.training_state import STATE_KEYS, TrainingState
from adaptive_lm_ds.model.sharding import shard_from, tied_names
from adaptive_lm_ds.optim.optimizers import NAG


def model_config_of(module: torch.nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` of an ``AdaptiveLM``, a pipeline stage or a DeepSpeed pipeline module over one."""
    for part in module.modules():
        if isinstance(getattr(part, "cfg", None), ModelConfig):
            return part.cfg
    raise TypeError(f"{type(module).__name__} holds no AdaptiveLM")


def tp_rank_of(module: torch.nn.Module) -> int:
    """This rank's TP rank in ``module``'s own tensor-parallel group (the one its shards were cut for)."""
    for part in module.modules():
        if hasattr(part, "tp_group"):
            return part.tp_group.rank()
    return parallel.current().tp_rank


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """``"nag"`` or ``"adam"``: the :data:`STATE_KEYS` entry of the (DeepSpeed-wrapped) optimizer."""
    base = getattr(optimizer, "optimizer", optimizer)
    return "nag" if isinstance(base, NAG) else "adam"


def _new_state(like: torch.Tensor, kind: str, adam_step: int | None) -> dict[str, torch.Tensor]:
    state = {key: torch.zeros_like(like, dtype=torch.float32) for key in STATE_KEYS[kind]}
    if kind == "adam":
        state["step"] = torch.tensor(float(adam_step or 0))
    return state


def _prepare_flat_state(optimizer, kind: str, adam_step: int | None) -> list[torch.Tensor]:
    """Create the base optimizer's state over ZeRO's flat fp32 partitions and link DeepSpeed's fragments to it."""
    base = optimizer.optimizer
    flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    if flats is None:
        flats = [p for group in base.param_groups for p in group["params"]]
    for flat in flats:
        base.state[flat] = _new_state(flat, kind, adam_step)
    deepspeed_compat.relink_optimizer_state(optimizer)
    return flats


@torch.no_grad()
def load_training_state(engine, state: TrainingState) -> None:
    """Copy ``state`` (weights; moments, step and lr_old where it has them) into this rank's part of ``engine``.

    Every rank calls it for its own shards; nothing is communicated. A state without moments loads the
    weights only and leaves the optimizer as built. The caller sets the schedule's update count.
    """
    cfg = model_config_of(engine.module)
    owners, tp_rank = tied_names(cfg), tp_rank_of(engine.module)
    optimizer = engine.optimizer
    keys = list(state.moments)
    if keys and optimizer_kind(optimizer) != state.optimizer:
        raise CheckpointError(
            f"the checkpoint's optimizer state is {state.optimizer}'s but this run uses {optimizer_kind(optimizer)}; "
            "use the same --optimizer, or --reset-optimizer to keep only the weights"
        )
    zero3 = any(hasattr(p, "ds_tensor") for p in engine.module.parameters())
    fragments = hasattr(optimizer, "optimizer") and (zero3 or any(
        hasattr(p, "_hp_mapping") for p in engine.module.parameters()))  # fmt: skip
    if keys and fragments:
        _prepare_flat_state(optimizer, state.optimizer, state.adam_step)
    for name, param in engine.module.named_parameters():
        source = owners.get(name, name)
        if source not in state.weights:
            raise CheckpointError(f"the training state has no weight {source} (parameter {name} of this model)")
        shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps only a partition in the parameter
        values = [(key, shard_from(param, tensors, source, tp_rank, shape).float())
                  for key, tensors in [(None, state.weights), *((k, state.moments[k]) for k in keys)]]  # fmt: skip
        if zero3:
            _set_zero3(optimizer, param, values)
        elif fragments:
            for key, value in values:
                if key is None:
                    safe_set_full_fp32_param(param, value)
                    param.data.copy_(value.view_as(param))  # the module's copy (bf16 or fp32) of the master
                else:
                    safe_set_full_optimizer_state(param, value, key)
        else:
            param.data.copy_(values[0][1].view_as(param))
            if keys:
                optimizer.state[param] = _new_state(param, state.optimizer, state.adam_step)
                for key, value in values[1:]:
                    optimizer.state[param][key].copy_(value.view_as(param))
    if keys and state.lr_old is not None:
        for group in optimizer.param_groups:
            group["lr_old"] = state.lr_old


def _set_zero3(optimizer, param, values: list[tuple[str | None, torch.Tensor]]) -> None:
    """ZeRO-3: this DP rank's slice of each one-piece-shard value, into the fp32 partition, the state and the
    parameter's own partition."""
    rank, world = deepspeed_compat.zero3_partition(optimizer, param)
    part = param.ds_tensor.numel()
    for key, value in values:
        flat = value.reshape(-1)
        flat = torch.cat([flat, flat.new_zeros(part * world - flat.numel())]) if flat.numel() < part * world else flat
        local = flat.narrow(0, rank * part, part)
        if key is None:
            safe_set_local_fp32_param(param, local)
            param.ds_tensor.data.copy_(local)
        else:
            safe_set_local_optimizer_state(param, local, key)
