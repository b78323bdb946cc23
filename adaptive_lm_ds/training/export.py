"""Offline export: a DeepSpeed checkpoint of any TP x PP x DP layout -> one consolidated model.

One process, no launcher: ``trainer_state.json`` (written with every checkpoint) says the model
config, the layout and the ZeRO stage. The module weights are read from DeepSpeed's files
(``mp_rank_XX_model_states.pt`` without pipeline, ``layer_LL-model_TT-model_states.pt`` with),
mapped to ``AdaptiveLM`` names, and TP shards are concatenated along each parameter's partition
dimension, padding trimmed (full shapes from the one-piece model built on the meta device).
The sharded dimension of a parameter is the one where rank 0's saved shape differs from the full shape
(a band smaller than TP keeps its only real rows on rank 0, so rank 0's copy is right there too).
ZeRO-3 keeps weights only in its optimizer partitions; those are read with DeepSpeed's own
``zero_to_fp32`` (TP = PP = 1). Files are opened with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.consolidated import model_config_from_dict
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.model.sharding import plain_shapes
from adaptive_lm_ds.training.checkpoint import COMPLETE, CheckpointError, read_latest

STATE_FILE = "trainer_state.json"


def locate(path: str | Path) -> Path:
    """A tag folder, from itself or from a save dir (its ``latest``)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        if not (path / COMPLETE).is_file():
            raise CheckpointError(f"{path} has no {COMPLETE} marker: the save did not finish; use an older tag")
        return path
    tag = read_latest(path) if path.is_dir() else None
    if tag is None:
        raise CheckpointError(f"{path} is neither a checkpoint folder ({STATE_FILE}) nor a save dir with `latest`")
    return path / tag


def read_record(tag_dir: Path) -> dict:
    try:
        return json.loads((tag_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{tag_dir / STATE_FILE} is unreadable ({e}); the checkpoint is corrupt") from None


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises several types on a truncated file
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e}); the checkpoint is corrupt") from None


def _rank_state(tag_dir: Path, cfg: ModelConfig, tp_rank: int, pp: int) -> dict[str, torch.Tensor]:
    """One TP rank's weights under ``AdaptiveLM`` names (all pipeline stages merged)."""
    if pp == 1:
        return dict(_load(tag_dir / f"mp_rank_{tp_rank:02d}_model_states.pt")["module"])
    out: dict[str, torch.Tensor] = {}
    last = cfg.num_layers + 1
    for layer in range(last + 1):
        for key, tensor in _load(tag_dir / f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt").items():
            if layer == 0:
                out["embed." + key] = tensor
            elif layer < last:
                out[f"layers.{layer - 1}.{key}"] = tensor
            elif not key.startswith("output.bands."):  # the tied copy: layer 0 holds it
                out[key] = tensor
    return out


def consolidate_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Dictionary | None]:
    """``(ModelConfig, consolidated fp32 state dict, Dictionary or None)`` of a training checkpoint."""
    tag_dir = locate(path)
    record = read_record(tag_dir)
    cfg = model_config_from_dict(record["model"])
    tp, pp = record["layout"]["tp"], record["layout"]["pp"]
    dictionary = Dictionary.load(tag_dir / "dict.txt") if (tag_dir / "dict.txt").is_file() else None
    full_shapes = plain_shapes(cfg)
    if record.get("zero_stage", 0) == 3:
        if tp > 1 or pp > 1:
            raise CheckpointError("offline export of ZeRO-3 checkpoints needs TP = PP = 1 (DeepSpeed's zero_to_fp32)")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        states = [get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)]
    else:
        states = [_rank_state(tag_dir, cfg, r, pp) for r in range(tp)]
    full: dict[str, torch.Tensor] = {}
    for name, shape in full_shapes.items():
        if any(name not in s for s in states):
            raise CheckpointError(f"{tag_dir}: parameter {name} is missing from the saved weights")
        tensor = states[0][name]
        split = [d for d, (a, b) in enumerate(zip(tensor.shape, shape)) if a != b]
        if split:  # a TP-sharded dimension: concatenate the ranks' slices, drop vocabulary padding
            tensor = torch.cat([s[name] for s in states], dim=split[0]).narrow(split[0], 0, shape[split[0]])
        if tensor.shape != shape:
            raise CheckpointError(f"{tag_dir}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        full[name] = tensor.float().contiguous()
    return cfg, full, dictionary
