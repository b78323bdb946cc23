"""Where a model comes from: one dispatch over the three sources the tools accept.

A consolidated folder (``config.json`` + ``model.safetensors``), a training checkpoint of any TP x PP x DP
layout (a save dir with ``latest`` or one of its tags; consolidated in memory), or a fairseq ``.pt``
(converted in memory). Every file is opened safely (safetensors, ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from adaptive_lm_ds import host_memory
from adaptive_lm_ds.checkpoint import STATE_FILE, CheckpointError, is_training_checkpoint
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.formats.consolidated import is_consolidated, load_consolidated
from adaptive_lm_ds.formats.export import consolidate_checkpoint
from adaptive_lm_ds.interop import load_fairseq_checkpoint


def load_model_source(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Dictionary | None]:
    """``(ModelConfig, consolidated state dict, Dictionary or None)`` of ``path`` (see the module docstring).

    A fairseq ``.pt`` carries no dictionary: the caller looks for ``dict.txt`` beside it. Consolidated
    folders and training checkpoints come as lazy state dicts (one tensor made at a time); glibc is set
    to give freed tensors back (:mod:`adaptive_lm_ds.host_memory`), as the caller builds a whole model
    next, whose initialisation frees as much as it keeps.
    """
    host_memory.configure_host_allocator()
    source = Path(path)
    if is_consolidated(source):
        return load_consolidated(source)
    if source.is_dir():
        if is_training_checkpoint(source):
            return consolidate_checkpoint(source)  # offline, from the DeepSpeed files of any layout
        raise CheckpointError(
            f"{source} is neither a consolidated model folder (config.json) nor a training checkpoint "
            f"({STATE_FILE} or latest)"
        )
    cfg, state = load_fairseq_checkpoint(source)
    return cfg, state, None
