"""Move weights between any TP x PP x DP layout and one consolidated (one-piece, TP = 1) state dict.

Names are ``AdaptiveLM``'s (``engine.plain_parameters`` maps pipeline names onto them); shapes are
those of the one-piece model, built on the meta device, so vocabulary padding never leaks out.
Export gathers TP shards with an all-gather inside each TP group and pipeline stages with one
``gather_object`` to global rank 0; import slices the consolidated tensors for this rank.
"""

from __future__ import annotations

import contextlib

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.model.lm import AdaptiveLM
from adaptive_lm_ds.model.sharding import consolidate, is_tensor_parallel, shard_of
from adaptive_lm_ds.training.checkpoint import CheckpointError
from adaptive_lm_ds.training.engine import plain_parameters


def plain_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Parameter shapes of the one-piece model (no memory: meta device)."""
    with torch.device("meta"):
        model = AdaptiveLM(cfg, parallel.ShapeOnlyGroup(1))
    return {name: p.shape for name, p in model.named_parameters()}


def _gathered(module: torch.nn.Module):
    """ZeRO-3 partitions parameters; gather them for the duration of the block (others: no-op)."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    return deepspeed.zero.GatheredParameters(params) if params else contextlib.nullcontext()


@torch.no_grad()
def gather_full_state(module: torch.nn.Module, cfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The consolidated fp32 state dict on global rank 0 (None elsewhere). Collective: every rank calls."""
    shapes = plain_shapes(cfg)
    tp_group = parallel.tensor_parallel_group()
    mine: dict[str, torch.Tensor] = {}
    with _gathered(module):
        for name, param in plain_parameters(module).items():
            full_size = shapes[name][param.partition_dim] if is_tensor_parallel(param) else None
            mine[name] = consolidate(param, param.data, full_size, tp_group).float().cpu().clone()
    first_replica = parallel_state.get_data_parallel_rank() == 0 and tp_group.rank() == 0
    rank = dist.get_rank()
    pieces = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(mine if first_replica else None, pieces, dst=0)
    if rank != 0:
        return None
    full: dict[str, torch.Tensor] = {}
    for piece in pieces:
        full.update(piece or {})
    missing = sorted(set(shapes) - set(full))
    if missing:
        raise CheckpointError(f"export is missing parameters {missing[:5]}...; the layout lost part of the model")
    return {name: full[name] for name in shapes}


@torch.no_grad()
def load_full_state(module: torch.nn.Module, full: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Copy a consolidated state dict into this rank's (un-initialised-by-DeepSpeed) module."""
    shapes = plain_shapes(cfg)
    missing = sorted(set(shapes) - set(full))
    unexpected = sorted(set(full) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"consolidated weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "use the model config stored with those weights"
        )
    for name in shapes:
        if full[name].shape != shapes[name]:
            raise CheckpointError(
                f"consolidated weight {name} has shape {tuple(full[name].shape)}, the model expects "
                f"{tuple(shapes[name])}; use the model config stored with those weights"
            )
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for name, param in plain_parameters(module).items():
        param.copy_(shard_of(param, full[name].to(param.dtype), tp_rank))
