"""Offline export: a DeepSpeed checkpoint of any TP x PP x DP layout -> one consolidated model.

One process, no launcher: the checkpoint record (:mod:`adaptive_lm_ds.checkpoint`) says the model
config, the layout and the ZeRO stage; every file is checksum-verified before it is read and
unpickled weights-only. The module weights are read from DeepSpeed's files (names in
:mod:`adaptive_lm_ds.checkpoint.names`), and TP shards are concatenated along each parameter's
partition dimension, padding trimmed (shapes from the one-piece model built on the meta device).
The sharded dimension of a parameter is the one where rank 0's saved shape differs from the one-piece shape
(a band smaller than TP keeps its only real rows on rank 0, so rank 0's copy is right there too).
ZeRO-3 keeps weights only in its optimizer partitions; those are read with DeepSpeed's own
``zero_to_fp32`` (TP = PP = 1), after each of its files passed our weights-only load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adaptive_lm_ds.checkpoint import CheckpointError, load_file, open_checkpoint
from adaptive_lm_ds.checkpoint import names as ckpt_names
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.formats.streaming import LazyTensors
from adaptive_lm_ds.model.sharding import one_piece_shapes


def _rank_state(tag_dir: Path, cfg: ModelConfig, tp_rank: int, pp: int) -> dict[str, torch.Tensor]:
    """One TP rank's weights under ``AdaptiveLM`` names (all pipeline stages merged)."""
    if pp == 1:
        return dict(load_file(tag_dir / ckpt_names.model_states_file(tp_rank))["module"])
    out: dict[str, torch.Tensor] = {}
    for layer in range(ckpt_names.pipeline_layer_count(cfg.num_layers)):
        for key, tensor in load_file(tag_dir / ckpt_names.layer_states_file(layer, tp_rank)).items():
            name = ckpt_names.adaptive_lm_name(layer, key, cfg.num_layers)
            if name is not None:
                out[name] = tensor
    return out


def _zero3_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for path in sorted(tag_dir.glob("*.pt")):  # zero_to_fp32 unpickles with weights-only loading off: vet every file
        load_file(path)
    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def consolidate_checkpoint(path: str | Path) -> tuple[ModelConfig, LazyTensors, Dictionary | None]:
    """``(ModelConfig, one-piece fp32 state dict, Dictionary or None)`` of a training checkpoint.

    The state dict is lazy (:mod:`adaptive_lm_ds.formats.streaming`): the ranks' saved shards (in their
    training precision) stay as loaded, and each one-piece fp32 tensor is assembled when asked for,
    so an export or evaluation never holds the whole model in fp32 beside them.
    """
    tag_dir, record = open_checkpoint(path)
    cfg = record.model_config()
    tp, pp = record.dims.tp, record.dims.pp
    dictionary = Dictionary.load(tag_dir / "dict.txt") if (tag_dir / "dict.txt").is_file() else None
    shapes = one_piece_shapes(cfg)
    if record.zero_stage == 3:
        if tp > 1 or pp > 1:
            raise CheckpointError("offline export of ZeRO-3 checkpoints needs TP = PP = 1 (DeepSpeed's zero_to_fp32)")
        states = [_zero3_state(tag_dir)]
    else:
        states = [_rank_state(tag_dir, cfg, r, pp) for r in range(tp)]
    for name in shapes:
        if any(name not in s for s in states):
            raise CheckpointError(f"{tag_dir}: parameter {name} is missing from the saved weights")

    def assemble(name: str) -> torch.Tensor:
        shape = shapes[name]
        tensor = states[0][name]
        split = [d for d, (a, b) in enumerate(zip(tensor.shape, shape)) if a != b]
        if split:  # a TP-sharded dimension: concatenate the ranks' slices, drop vocabulary padding
            tensor = torch.cat([s[name] for s in states], dim=split[0]).narrow(split[0], 0, shape[split[0]])
        if tensor.shape != shape:
            raise CheckpointError(f"{tag_dir}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        return tensor.float().contiguous()

    return cfg, LazyTensors(shapes, assemble), dictionary
