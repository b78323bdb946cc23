"""The one state adapter: one-piece weights and optimizer state <-> any TP x PP x DP x ZeRO layout.

The model declares, once, how its parameters map onto a layout (docs/checkpoints-across-layouts.md):

* names: ``AdaptiveLM.named_parameters()`` of the one-piece model (:func:`one_piece_shapes`), the same names
  a pipeline stage registers (:mod:`adaptive_lm_ds.training.pipeline`);
* sharding: a tensor-parallel parameter carries megatron-core's ``tensor_model_parallel`` /
  ``partition_dim``; rank ``r`` holds slice ``r`` of that dimension, vocabulary tables padded
  (:mod:`adaptive_lm_ds.model.sharding`);
* pipeline stage: :mod:`adaptive_lm_ds.checkpoint.names` (which layer file holds a name);
* tying: :func:`tied_names` (``{alias: owner}``); an alias reads its owner's tensors.

Everything that moves state between layouts is one of these calls: :func:`read_training_state` (a DeepSpeed
checkpoint of any layout -> :class:`TrainingState`), :func:`load_training_state` (a state -> a live engine of
the current layout), :func:`load_weights` (one-piece weights -> a module of any layout, before DeepSpeed
wraps it: ``--init-from``, the layout writer, evaluation and generation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from adaptive_lm_ds.checkpoint import CheckpointError
from adaptive_lm_ds.formats.state_reader import read_training_state
from adaptive_lm_ds.formats.state_writer import load_training_state, model_config_of, tp_rank_of
from adaptive_lm_ds.formats.streaming import shape_of
from adaptive_lm_ds.formats.training_state import STATE_KEYS, TrainingState
from adaptive_lm_ds.model.sharding import one_piece_shapes, shard_from, tied_names

__all__ = [
    "STATE_KEYS",
    "TrainingState",
    "load_training_state",
    "load_weights",
    "read_training_state",
]


@torch.no_grad()
def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy one-piece weights (owner names, one-piece shapes; a lazy mapping streams) into this rank's
    ``module`` (an ``AdaptiveLM``, a pipeline stage or DeepSpeed's pipeline module over one), each parameter's
    TP shard; tied aliases read their owner. Every owner must be there with its one-piece shape, and nothing
    else; one line names what does not fit."""
    cfg = model_config_of(module)
    shapes = one_piece_shapes(cfg)
    missing, unexpected = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"the weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "use the model config stored with those weights"
        )
    for name, shape in shapes.items():
        if tuple(shape_of(weights, name)) != tuple(shape):
            raise CheckpointError(
                f"weight {name} has shape {tuple(shape_of(weights, name))}, the model expects {tuple(shape)}; "
                "use the model config stored with those weights"
            )
    owners = tied_names(cfg)
    tp_rank = tp_rank_of(module)
    for name, param in module.named_parameters():
        param.copy_(shard_from(param, weights, owners.get(name, name), tp_rank).to(param.dtype))
