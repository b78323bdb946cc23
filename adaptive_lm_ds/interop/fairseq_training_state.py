"""fairseq training checkpoints <-> :class:`TrainingState`: take over a fairseq run mid-schedule, or hand one back.

A fairseq checkpoint (``Trainer.state_dict``) holds, beside the weights:

* ``last_optimizer_state``: the optimizer's ``state_dict``. Its parameters are numbered in the order
  fairseq's optimizer was built with: ``model.parameters()``, each tied parameter once (at its first
  name). Plain fp32 training stores one state per parameter; ``--fp16`` (``FP16Optimizer``) one state for
  a single flat fp32 master vector, the parameters concatenated in that order.
* ``optimizer_history[-1]``: ``num_updates``, ``lr_scheduler_state`` (only ``best`` for fairseq's
  schedules: the lr is a function of ``num_updates``) and the optimizer and criterion class names that
  ``--restore-file`` checks.
* ``extra_state["train_iterator"]``: ``epoch`` (1-based) and ``iterations_in_epoch`` (the micro batches
  each rank has consumed), kept as ``TrainingState.extra["fairseq_iterator"]``.

Moments are mapped with the weights' own name table (:func:`~adaptive_lm_ds.interop.fairseq.key_map`):
a moment is laid out like its parameter, so the converter that maps weights maps moments too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.formats.training_state import STATE_KEYS, TrainingState
from adaptive_lm_ds.interop.fairseq import (
    SCRATCH_SUFFIXES,
    VERSION_KEYS,
    FairseqConversionError,
    fairseq_model_state,
    fairseq_to_ours,
    key_map,
    ours_to_fairseq,
)
from adaptive_lm_ds.interop.safe_load import safe_load

OPTIMIZER_CLASS = {"nag": "FairseqNAG", "adam": "FairseqAdam"}  # what optimizer_history names
# fairseq's registration order inside a decoder layer (MultiheadAttention makes k, v, q, then out_proj)
_LAYER_ORDER = ("in_proj", "k_proj", "v_proj", "q_proj", "out_proj", "self_attn_layer_norm", "fc1", "fc2",
                "final_layer_norm")  # fmt: skip
FAIRSEQ_ITERATOR = "fairseq_iterator"  # TrainingState.extra key: fairseq's train_iterator state
FAIRSEQ_WORLD_SIZE = "fairseq_world_size"  # ...and the data-parallel size its iterations_in_epoch counts per


def fairseq_restore_file(restore_file: str, save_dir: str | os.PathLike) -> Path | None:
    """The fairseq checkpoint ``--restore-file`` names, or None: a file (a tag folder is ours), as given or
    inside ``--save-dir`` (how fairseq reads a bare name such as ``checkpoint_last.pt``)."""
    if not restore_file:
        return None
    return next((p for p in (Path(restore_file), Path(save_dir) / restore_file) if p.is_file()), None)


def _layer_rank(name: str) -> int:
    return next((i for i, part in enumerate(_LAYER_ORDER) if f".{part}" in name), len(_LAYER_ORDER))


def fairseq_parameter_order(cfg: ModelConfig) -> list[str]:
    """fairseq names of ``cfg``'s parameters in fairseq's ``model.parameters()`` order (ties once).

    Input embeddings, positions, layers, final norm, output: :func:`key_map`'s order, except inside a
    layer, where fairseq registers attention's k, v, q projections before out_proj, and fc1/fc2 before
    the final layer norm. (A checkpoint fairseq wrote lists its keys in this order.)
    """
    entries = [e for e in key_map(cfg) if not e.alias]
    layer_of = {
        e.fairseq: int(e.fairseq.split(".layers.")[1].split(".")[0]) for e in entries if ".layers." in e.fairseq
    }
    first_layer = next((i for i, e in enumerate(entries) if e.fairseq in layer_of), len(entries))
    layers = sorted(
        (e for e in entries if e.fairseq in layer_of), key=lambda e: (layer_of[e.fairseq], _layer_rank(e.fairseq))
    )  # stable: weight before bias
    rest = [e for e in entries if e.fairseq not in layer_of]
    return [e.fairseq for e in rest[:first_layer] + layers + rest[first_layer:]]


def _parameter_names_in_file(checkpoint: Mapping[str, Any], cfg: ModelConfig) -> list[str]:
    """The file's own parameter order: its model keys less buffers and the second names of ties."""
    model = checkpoint["model"]
    legacy = any(k.endswith("self_attn.in_proj_weight") for k in model)
    aliases = {e.fairseq for e in key_map(cfg, legacy_in_proj=legacy) if e.alias}
    return [k for k in model if k not in aliases and k not in VERSION_KEYS and not k.endswith(SCRATCH_SUFFIXES)]


def _optimizer_kind(path: Path, optim: Mapping[str, Any]) -> str:
    groups = optim.get("param_groups")
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(optim.get("state"), Mapping):
        raise FairseqConversionError(
            f"{path}: last_optimizer_state is not one plain optimizer's state dict (one param group); "
            "only fairseq's NAG and Adam, unsharded, can be taken over"
        )
    group = groups[0]
    if "lr_old" in group and "momentum" in group:
        return "nag"
    if "betas" in group:
        if group.get("amsgrad"):
            raise FairseqConversionError(f"{path}: Adam with --amsgrad has state this trainer does not keep")
        return "adam"
    raise FairseqConversionError(
        f"{path}: the optimizer's param group has keys {sorted(group)}; only fairseq's NAG and Adam can be taken over"
    )


def _per_parameter(path: Path, optim: Mapping[str, Any], sizes: list[int], key: str) -> list[torch.Tensor]:
    """State ``key`` of each parameter, in order (a flat fp32 master vector split by ``sizes``)."""
    state = optim["state"]
    if len(state) == len(sizes):
        return [state[i][key].float() for i in range(len(sizes))]
    if len(state) == 1 and state[next(iter(state))][key].numel() == sum(sizes):  # --fp16's flat fp32 master
        return list(torch.split(state[next(iter(state))][key].float().reshape(-1), sizes))
    raise FairseqConversionError(
        f"{path}: last_optimizer_state holds {len(state)} parameter state(s) but the model has {len(sizes)} "
        "parameters (and no flat vector of their size); was it saved with a sharded optimizer?"
    )


def _moments_to_ours(checkpoint: Mapping[str, Any], cfg: ModelConfig, moments: dict[str, torch.Tensor]):
    """One-piece moments under our names: the weights' converter applied to a model dict of moments
    (``moments``: fairseq parameter name -> moment; a tie's second name gets its owner's moment)."""
    model = checkpoint["model"]
    legacy = any(k.endswith("self_attn.in_proj_weight") for k in model)
    entries = {e.fairseq: e for e in key_map(cfg, legacy_in_proj=legacy)}
    owner = {e.ours: e.fairseq for e in entries.values() if not e.alias}
    as_model = {}
    for key, tensor in model.items():
        entry = entries.get(key)
        if entry is None:
            as_model[key] = tensor  # buffers: passed through, skipped by the converter
        else:
            as_model[key] = moments[owner[entry.ours] if entry.alias else key]
    return fairseq_to_ours(dict(checkpoint, model=as_model))[1]


def _world_size(checkpoint: Mapping[str, Any]) -> int | None:
    """fairseq's ``distributed_world_size`` (its data-parallel ranks), from ``cfg`` or older ``args``."""
    section = (checkpoint.get("cfg") or {}).get("distributed_training") or {}
    world = section.get("distributed_world_size") or getattr(checkpoint.get("args"), "distributed_world_size", None)
    return int(world) if world else None


def read_fairseq_training_state(path: str | os.PathLike) -> tuple[ModelConfig, TrainingState]:
    """``(ModelConfig, TrainingState)`` of a fairseq training checkpoint, read weights-only.

    ``moments``: NAG's ``momentum_buffer`` or Adam's ``exp_avg``/``exp_avg_sq`` (``adam_step`` its
    step), one-piece under our names; ``lr_old``: NAG's last applied lr; ``num_updates``:
    ``optimizer_history[-1]``; ``data`` None (fairseq's order is not ours), ``extra["fairseq_iterator"]``
    fairseq's ``train_iterator`` state and ``extra["fairseq_world_size"]`` the DP size it counts for.
    Refuses (one line) a checkpoint without optimizer state, a sharded or unknown optimizer.
    """
    path = Path(path)
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, Mapping):
        raise FairseqConversionError(f"{path} is not a fairseq checkpoint")
    cfg, weights = fairseq_to_ours(checkpoint)
    optim, history = checkpoint.get("last_optimizer_state"), checkpoint.get("optimizer_history") or []
    if not isinstance(optim, Mapping) or not history:
        raise FairseqConversionError(
            f"{path} holds no optimizer state (saved with --no-save-optimizer-state?), so its run cannot be "
            "continued mid-schedule; start from its weights instead (adaptive-lm-convert, then --init-from)"
        )
    kind = _optimizer_kind(path, optim)
    names = _parameter_names_in_file(checkpoint, cfg)
    sizes = [checkpoint["model"][n].numel() for n in names]
    moments = {}
    for key in STATE_KEYS[kind]:
        buffers = _per_parameter(path, optim, sizes, key)
        shaped = {n: b.reshape(checkpoint["model"][n].shape) for n, b in zip(names, buffers)}
        moments[key] = _moments_to_ours(checkpoint, cfg, shaped)
    group = optim["param_groups"][0]
    step = None
    if kind == "adam":
        step = int(next(iter(optim["state"].values()))["step"])
    extra = checkpoint.get("extra_state") or {}
    iterator = dict(extra.get("train_iterator") or {"version": 2, "epoch": 1, "iterations_in_epoch": 0})
    state = TrainingState(
        weights=weights, optimizer=kind, moments=moments, num_updates=int(history[-1]["num_updates"]),
        adam_step=step, lr_old=float(group["lr_old"]) if kind == "nag" else None, data=None,
        extra={FAIRSEQ_ITERATOR: iterator, FAIRSEQ_WORLD_SIZE: _world_size(checkpoint), "source": str(path)},
    )  # fmt: skip
    return cfg, state


def fairseq_iterator_state(position: Mapping[str, Any] | None) -> dict[str, Any]:
    """fairseq's ``train_iterator`` state for a training record's data position (``record.data``).

    fairseq's order (``--batch-order fairseq``: ``epoch`` 0-based, ``position`` micro batches per rank of
    ``ceil(num_batches / dp_size)``) maps one to one, an exhausted epoch to the next one's start, as
    ``EpochBatchIterator.state_dict`` writes it; fairseq-train must then run at the same DP size. Our own
    order has no place in fairseq's except an epoch's start: mid-epoch it is refused.
    """
    if position is None:
        return {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True}
    epoch, done = int(position["epoch"]), int(position["position"])
    if position.get("order") == "fairseq":
        per_rank = -(-int(position["num_batches"]) // int(position["dp_size"]))
        epoch, done = (epoch + 1, 0) if done >= per_rank else (epoch, done)
    elif done:
        raise FairseqConversionError(
            f"the checkpoint stopped {done} batches into epoch {epoch + 1} of this project's batch order, which "
            "fairseq cannot continue; convert one saved at an epoch's end or by a run with --batch-order fairseq"
        )
    return {
        "version": 2,
        "epoch": epoch + 1,
        "iterations_in_epoch": done,
        "shuffle": bool(position.get("shuffle", True)),
    }


def _param_group(state: TrainingState, settings: Mapping[str, Any], count: int) -> dict[str, Any]:
    """fairseq's one param group: its saved hyper-parameters replace the command line's on restore."""
    if state.optimizer == "nag":
        group = {"lr": state.lr_old, "lr_old": state.lr_old, "momentum": float(settings["momentum"]),
                 "weight_decay": float(settings.get("weight_decay", 0.0))}  # fmt: skip
    else:
        group = {"lr": float(settings["lr"]), "betas": tuple(float(b) for b in settings["adam_betas"]),
                 "eps": float(settings["adam_eps"]), "weight_decay": float(settings.get("weight_decay", 0.0)),
                 "amsgrad": False}  # fmt: skip
    return {**group, "params": list(range(count))}


def fairseq_training_checkpoint(
    cfg: ModelConfig,
    state: TrainingState,
    optimizer_settings: Mapping[str, Any],
    iterator: Mapping[str, Any],
    data: str = "",
    arch: str | None = None,
) -> dict[str, Any]:
    """The checkpoint dict ``fairseq-train --restore-file`` continues from ``state`` (plain fp32 optimizer).

    ``optimizer_settings``: NAG's ``momentum``/``weight_decay`` or Adam's ``lr``/``adam_betas``/
    ``adam_eps``/``weight_decay`` (fairseq restores them from the file); ``iterator``: fairseq's
    ``train_iterator`` state (``epoch`` 1-based, ``iterations_in_epoch``).
    """
    if state.optimizer not in OPTIMIZER_CLASS:
        raise FairseqConversionError(f"fairseq has no optimizer matching {state.optimizer!r}")
    if state.optimizer == "nag" and state.lr_old is None:
        raise FairseqConversionError("the NAG state has no lr_old, which fairseq needs to rescale the momentum")
    weights = {name: torch.as_tensor(state.weights[name]).float() for name in state.weights}
    checkpoint = ours_to_fairseq(cfg, weights, data=data, arch=arch, num_updates=state.num_updates)
    order = fairseq_parameter_order(cfg)
    per_param: list[dict[str, torch.Tensor]] = [{} for _ in order]
    for key in STATE_KEYS[state.optimizer]:
        moment = fairseq_model_state(cfg, {n: torch.as_tensor(t).float() for n, t in state.moments[key].items()})
        for slot, name in zip(per_param, order):
            slot[key] = moment[name].clone()
    if state.optimizer == "adam":
        for slot in per_param:
            slot["step"] = int(state.adam_step or 0)
    model, placed = checkpoint["model"], set(order)  # parameters in fairseq's order, as its files list them
    checkpoint["model"] = {**{n: model[n] for n in order}, **{k: t for k, t in model.items() if k not in placed}}
    checkpoint["optimizer_history"][-1]["optimizer_name"] = OPTIMIZER_CLASS[state.optimizer]
    checkpoint["last_optimizer_state"] = {
        "state": dict(enumerate(per_param)),
        "param_groups": [_param_group(state, optimizer_settings, len(order))],
    }
    checkpoint["extra_state"]["train_iterator"] = {"version": 2, "shuffle": True, **dict(iterator)}
    return checkpoint


def write_fairseq_training_checkpoint(path: str | os.PathLike, cfg: ModelConfig, state: TrainingState,
                                      **options: Any) -> None:  # fmt: skip
    """Write :func:`fairseq_training_checkpoint` (``options``: its keyword arguments) to ``path``
    through a temporary file and a rename, so an existing good file is never half overwritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(fairseq_training_checkpoint(cfg, state, **options), tmp)
    os.replace(tmp, path)
