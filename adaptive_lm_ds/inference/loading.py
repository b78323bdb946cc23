"""Where a model comes from and how a tool starts it: the one loading path of evaluation and generation.

:func:`load_model_source` dispatches over the three sources the tools accept: a consolidated folder
(``config.json`` + ``model.safetensors``), a training checkpoint of any TP x PP x DP layout (a save dir with
``latest`` or one of its tags; consolidated in memory), or a fairseq ``.pt`` (converted in memory). Every
file is opened safely (safetensors, ``torch.load(weights_only=True)``). :func:`start_layout` sets up the
TP x PP layout the tool was launched for, and :func:`build_model` builds this rank's part of the model
(its TP shard, or its pipeline stage) from the consolidated weights, on the accelerator.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from adaptive_lm_ds import host_memory, parallel
from adaptive_lm_ds.checkpoint import STATE_FILE, CheckpointError, is_training_checkpoint
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.formats.consolidated import is_consolidated, load_consolidated
from adaptive_lm_ds.formats.export import consolidate_checkpoint
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.interop import load_fairseq_checkpoint
from adaptive_lm_ds.model.lm import AdaptiveLM
from adaptive_lm_ds.model.pipeline_stage import PipelineStageLM


def load_model_source(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Dictionary | None]:
    """``(ModelConfig, one-piece state dict, Dictionary or None)`` of ``path`` (see the module docstring).

    A fairseq ``.pt`` carries no dictionary: the caller looks for ``dict.txt`` beside it. Consolidated
    folders and training checkpoints come as lazy state dicts (one tensor made at a time); glibc is set
    to give freed tensors back (:func:`adaptive_lm_ds.host_memory.start_up_phase`), as the caller builds a
    whole model next (:func:`build_model`), whose initialisation frees as much as it keeps.
    """
    host_memory.start_up_phase()
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


def start_layout(tp: int = 1, pp: int = 1) -> None:
    """The tool's TP x PP layout over the ranks it was launched on (exactly ``tp * pp``; no data parallelism).

    One process needs no launcher; more join the launcher's process group first. Raises
    :class:`~adaptive_lm_ds.parallel.LayoutError` naming both numbers when the world does not fit.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != tp * pp:
        raise parallel.LayoutError(
            f"launched {world} ranks but --tensor-model-parallel-size {tp} x --pipeline-model-parallel-size "
            f"{pp} = {tp * pp}; launch exactly TP x PP ranks"
        )
    if world > 1:
        parallel.init_process_group()
    parallel.initialize_parallel(parallel.ParallelDims(tp=tp, pp=pp))


def build_model(
    cfg: ModelConfig, state: dict[str, torch.Tensor], pp: int = 1, device: str | torch.device | None = None
) -> torch.nn.Module:
    """This rank's model in eval mode, loaded from consolidated weights: the one-piece ``AdaptiveLM`` (its TP
    shard) at ``pp == 1``, else its ``PipelineStageLM`` with only the tensors that stage holds (through the
    state adapter: a lazy state makes only those; a tied weight is read under its owner's name). On ``device``,
    by default the accelerator's. Ends the loading's start-up phase
    (:func:`adaptive_lm_ds.host_memory.steady_phase`): the forwards that follow reuse the heap."""
    model = (AdaptiveLM(cfg) if pp == 1 else PipelineStageLM(cfg)).eval()
    load_weights(model, state)
    model = model.to(device or parallel.accelerator_device())
    host_memory.steady_phase()
    return model
