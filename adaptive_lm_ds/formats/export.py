"""Offline export: a DeepSpeed checkpoint of any TP x PP x DP layout -> one consolidated model.

One process, no launcher: the checkpoint record (:mod:`adaptive_lm_ds.checkpoint`) says the model
config, the layout and the ZeRO stage; every file is checksum-verified before it is read and
unpickled weights-only. The module weights are read from DeepSpeed's files (names in
:mod:`adaptive_lm_ds.checkpoint.names`), and TP shards are concatenated along each parameter's
partition dimension, padding trimmed (shapes from the one-piece model built on the meta device).
The sharded dimension of a parameter is the one where rank 0's saved shape differs from the one-piece shape
(a band smaller than TP keeps its only real rows on rank 0, so rank 0's copy is right there too).
ZeRO-3 keeps weights only in its optimizer partitions (TP = PP = 1): :func:`_zero3_state` merges the
ranks' flat fp32 partitions itself, from the dicts our weights-only loader returned. DeepSpeed's
``zero_to_fp32`` is never handed a path: it globs the folder again (a save dir whose path holds ``[``,
``*`` or ``?`` matches a look-alike sibling folder) and unpickles what it finds with weights-only
loading off.
"""

from __future__ import annotations

import math
import re
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


ZERO3_MODEL_FILE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")
ZERO3_OPTIM_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def _by_rank(tag_dir: Path, pattern: re.Pattern) -> list[Path]:
    """The tag's files named ``pattern`` (group 1: the DP rank), in rank order; listed, never globbed."""
    found = sorted((int(m.group(1)), p) for p in tag_dir.iterdir() if (m := pattern.match(p.name)))
    if [rank for rank, _ in found] != list(range(len(found))) or not found:
        raise CheckpointError(f"{tag_dir}: the ZeRO-3 files ({pattern.pattern}) are not one per rank 0..N-1")
    return [p for _, p in found]


def _zero3_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """One-piece fp32 weights of a ZeRO-3 checkpoint (DP = N, TP = PP = 1) from the ranks' partitions.

    Each rank's optimizer file holds ``fp32_flat_groups``: per parameter group, one flat tensor that
    lays out, parameter after parameter (in ``param_shapes`` order), the rank's slice of
    ``ceil(numel / N)`` elements (the last rank's padded). Parameter ``p`` is the concatenation of the
    ranks' slices at the same offset, cut to ``numel`` and viewed as its shape (DeepSpeed's
    ``zero_to_fp32`` merge, reimplemented over the loaded dicts); tied aliases (``shared_params``)
    point at their owner.
    """
    model_states = [load_file(p) for p in _by_rank(tag_dir, ZERO3_MODEL_FILE)]
    flats = []
    for path in _by_rank(tag_dir, ZERO3_OPTIM_FILE):
        optim = load_file(path)["optimizer_state_dict"]
        if int(optim.get("zero_stage", 0)) != 3:
            raise CheckpointError(f"{path} is not a ZeRO-3 optimizer partition (zero_stage {optim.get('zero_stage')})")
        flats.append(torch.cat([group.reshape(-1) for group in optim["fp32_flat_groups"]]))
    world = len(flats)
    if len(model_states) != world:
        raise CheckpointError(f"{tag_dir}: {len(model_states)} ZeRO-3 model files but {world} optimizer partitions")
    shapes = {name: torch.Size(shape) for group in model_states[0]["param_shapes"] for name, shape in group.items()}
    state, offset = {}, 0
    for name, shape in shapes.items():
        part = math.ceil(shape.numel() / world)
        if offset + part > flats[0].numel():
            raise CheckpointError(f"{tag_dir}: the ZeRO-3 partitions are shorter than param_shapes says ({name})")
        full = torch.cat([flat.narrow(0, offset, part) for flat in flats])
        state[name] = full.narrow(0, 0, shape.numel()).view(shape)
        offset += part
    if offset != flats[0].numel():
        raise CheckpointError(f"{tag_dir}: the ZeRO-3 partitions hold {flats[0].numel()} elements, not {offset}")
    for alias, owner in model_states[0].get("shared_params", {}).items():
        if owner in state:
            state[alias] = state[owner]
    return state


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
