"""Load a one-piece (TP = 1) state dict, e.g. a consolidated folder's, into any TP x PP x DP layout's module.

Names are ``AdaptiveLM``'s, a pipeline stage's included (its last stage's tied copies read their
owner's entry: docs/model.md, "Tying"); shapes are those of the one-piece model, built on the meta
device, so vocabulary padding never leaks in. The other direction, any layout's checkpoint to one
consolidated model, is offline: ``export.py``.
"""

from __future__ import annotations

import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.checkpoint import CheckpointError
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.formats.consolidated import tied_names
from adaptive_lm_ds.model.sharding import one_piece_shapes, shard_of


@torch.no_grad()
def load_one_piece_state(module: torch.nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Copy a one-piece state dict into this rank's (un-initialised-by-DeepSpeed) module."""
    shapes = one_piece_shapes(cfg)
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"consolidated weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "use the model config stored with those weights"
        )
    for name in shapes:
        if state[name].shape != shapes[name]:
            raise CheckpointError(
                f"consolidated weight {name} has shape {tuple(state[name].shape)}, the model expects "
                f"{tuple(shapes[name])}; use the model config stored with those weights"
            )
    tp_rank, owners = parallel.current().tp_rank, tied_names(cfg)
    for name, param in module.named_parameters():
        source = state[owners.get(name, name)]
        param.copy_(shard_of(param, source.to(param.dtype), tp_rank))
