"""fairseq ``transformer_lm`` checkpoints <-> our consolidated :class:`AdaptiveLM` state dict, both ways.

The architecture is read from the checkpoint itself (:mod:`adaptive_lm_ds.interop.fairseq_args`:
hyperparameters cross-checked against the tensor shapes, never a preset).

One table, :func:`key_map`, lists every fairseq tensor and the tensor(s) of ours it is: a plain copy, a
concatenation along dim 0 (legacy fused ``in_proj_weight`` = q|k|v; an untied adaptive-softmax
``head.weight`` = band-0 words | cluster logits) or an *alias* (fairseq stores tied weights under both
names; we store them once). Conversion in either direction walks that table, so the two directions
cannot disagree. Keys the table does not know stop the conversion with their names.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.interop.fairseq_args import D, FairseqConversionError, infer_config, model_args
from adaptive_lm_ds.interop.fairseq_cfg import criterion_class_name, fairseq_cfg
from adaptive_lm_ds.interop.safe_load import safe_load

SCRATCH_SUFFIXES = ("._float_tensor",)  # fairseq's uninitialised device-placeholder buffers
VERSION_KEYS = (D + "version", D + "adaptive_softmax.version")


@dataclass(frozen=True)
class Entry:
    """fairseq tensor ``fairseq`` = ``cat([ours...], dim=0)`` (one name: a copy); ``alias``: a second name."""

    fairseq: str
    ours: tuple[str, ...]
    alias: bool = False


# ===================================================================== key map


def _layer_entries(cfg: ModelConfig, layer: int, legacy_in_proj: bool) -> list[Entry]:
    f, o = f"{D}layers.{layer}.", f"layers.{layer}."
    out = []
    if legacy_in_proj:
        for p in ("weight", "bias"):
            out.append(Entry(f"{f}self_attn.in_proj_{p}", tuple(f"{o}self_attn.{x}_proj.{p}" for x in "qkv")))
    attn = ["out_proj"] if legacy_in_proj else ["q_proj", "k_proj", "v_proj", "out_proj"]
    names = [f"self_attn.{n}" for n in attn] + ["self_attn_layer_norm", "final_layer_norm"]
    for name in names:
        out += [Entry(f"{f}{name}.{p}", (f"{o}{name}.{p}",)) for p in ("weight", "bias")]
    for fc in ("fc1", "fc2"):
        out += [Entry(f"{f}{fc}.{p}", (f"{o}ffn.{fc}.{p}",)) for p in ("weight", "bias")]
    return out


def _input_entries(cfg: ModelConfig) -> list[Entry]:
    if not cfg.adaptive_input:
        return [Entry(D + "embed_tokens.weight", ("embed.tokens.bands.0.table.weight",))]
    out = []
    for i in range(len(cfg.input_bands())):
        out.append(Entry(f"{D}embed_tokens.embeddings.{i}.0.weight", (f"embed.tokens.bands.{i}.table.weight",)))
        out.append(Entry(f"{D}embed_tokens.embeddings.{i}.1.weight", (f"embed.tokens.bands.{i}.proj.weight",)))
    return out


def _output_entries(cfg: ModelConfig) -> list[Entry]:
    if not cfg.adaptive_softmax:
        if cfg.share_input_output_embed:
            return [Entry(D + "output_projection.weight", ("embed.tokens.bands.0.table.weight",), alias=True)]
        return [Entry(D + "output_projection.weight", ("output.tables.0.weight",))]
    s, tied = D + "adaptive_softmax.", cfg.tie_adaptive_weights
    num_tails = len(cfg.output_bands()) - 1
    if tied:
        out = [Entry(s + "head.word_proj.weight", ("embed.tokens.bands.0.table.weight",), alias=True)]
        out += [Entry(s + "head.class_proj.weight", ("output.cluster_proj.weight",))] if num_tails else []
    else:
        head = ("output.tables.0.weight",) + (("output.cluster_proj.weight",) if num_tails else ())
        out = [Entry(s + "head.weight", head)]
    for i in range(num_tails):
        if cfg.tie_adaptive_proj:
            out.append(Entry(f"{s}tail.{i}.0.weight", (f"embed.tokens.bands.{i + 1}.proj.weight",), alias=True))
        else:
            out.append(Entry(f"{s}tail.{i}.0.weight", (f"output.tail_projs.{i}.weight",)))
        table = f"embed.tokens.bands.{i + 1}.table.weight" if tied else f"output.tables.{i + 1}.weight"
        out.append(Entry(f"{s}tail.{i}.2.weight", (table,), alias=tied))
    return out


def key_map(cfg: ModelConfig, legacy_in_proj: bool = False) -> list[Entry]:
    """Every fairseq model tensor of ``cfg`` and what it is in our one-piece state dict."""
    out = _input_entries(cfg)
    if cfg.learned_pos:
        out.append(Entry(D + "embed_positions.weight", ("embed.positions.weight",)))
    for layer in range(cfg.num_layers):
        out += _layer_entries(cfg, layer, legacy_in_proj)
    if cfg.final_norm:
        out += [Entry(f"{D}layer_norm.{p}", (f"final_norm.{p}",)) for p in ("weight", "bias")]
    return out + _output_entries(cfg)


def _split_sizes(cfg: ModelConfig, entry: Entry) -> list[int]:
    if "in_proj" in entry.fairseq:
        return [cfg.embed_dim] * 3
    return [cfg.output_bands()[0].size, len(cfg.output_bands()) - 1]


# ===================================================================== conversion


def fairseq_to_ours(checkpoint: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """``(ModelConfig, one-piece state dict)`` of a loaded fairseq checkpoint (see :func:`safe_load`)."""
    state = checkpoint.get("model")
    if not isinstance(state, Mapping):
        raise FairseqConversionError("checkpoint has no 'model' state dict")
    args = model_args(checkpoint)
    cfg = infer_config(args, state)
    legacy = any(k.endswith("self_attn.in_proj_weight") for k in state)
    entries = key_map(cfg, legacy_in_proj=legacy)
    missing = [e.fairseq for e in entries if e.fairseq not in state]
    if missing:
        raise FairseqConversionError(f"checkpoint lacks {len(missing)} tensor(s) the architecture needs: {missing[:8]}")
    known = {e.fairseq for e in entries} | set(VERSION_KEYS)
    unknown = sorted(k for k in state if k not in known and not k.endswith(SCRATCH_SUFFIXES))
    if unknown:
        raise FairseqConversionError(
            f"checkpoint has {len(unknown)} key(s) this converter does not know: {unknown[:8]}"
        )
    ours: dict[str, torch.Tensor] = {}
    for entry in entries:
        tensor = state[entry.fairseq].float()
        if entry.alias:
            if not torch.equal(ours[entry.ours[0]], tensor):
                raise FairseqConversionError(f"{entry.fairseq} should be tied to {entry.ours[0]} but differs from it")
        elif len(entry.ours) == 1:
            ours[entry.ours[0]] = tensor.clone()
        else:
            for name, part in zip(entry.ours, torch.split(tensor, _split_sizes(cfg, entry), dim=0)):
                ours[name] = part.clone()
    return cfg, ours


def fairseq_model_state(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """fairseq's ``model`` state dict: tied tensors under both names (one storage), version buffers."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict([(D + "version", torch.tensor([3.0]))])
    if cfg.adaptive_input:
        state[D + "embed_tokens._float_tensor"] = torch.zeros(1)
    for entry in key_map(cfg):
        parts = [ours[name] for name in entry.ours]
        state[entry.fairseq] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if cfg.adaptive_softmax:
        state[D + "adaptive_softmax.version"] = torch.tensor([1])
        if cfg.tie_adaptive_weights:
            state[D + "adaptive_softmax.head._float_tensor"] = torch.zeros(1)
    return state


def ours_to_fairseq(
    cfg: ModelConfig,
    ours: Mapping[str, torch.Tensor],
    data: str = "",
    arch: str | None = None,
    num_updates: int = 0,
    best: float | None = None,
) -> dict[str, Any]:
    """A checkpoint dict fairseq treats as its own trainer's (``Trainer.state_dict`` layout).

    ``cfg``: every section, the arch's complete model keys (:func:`fairseq_cfg`; ``data`` is
    ``task.data``). ``optimizer_history``: one entry as fairseq appends it, with the
    ``lr_scheduler_state`` ``{"best": best}`` its loaders read. No ``last_optimizer_state`` (as
    ``--no-save-optimizer-state``): ``--restore-file`` then starts the optimizer afresh, with the
    weights, ``num_updates`` and an epoch-1 data iterator from here.
    """
    expected = {name for e in key_map(cfg) for name in e.ours}
    missing, extra = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or extra:
        raise FairseqConversionError(
            f"state dict does not match the config: missing {missing[:8]}, unexpected {extra[:8]}"
        )
    history = {
        "criterion_name": criterion_class_name(cfg),
        "optimizer_name": "FairseqNAG",
        "lr_scheduler_state": {"best": best},
        "num_updates": int(num_updates),
    }
    return {
        "args": None,
        "cfg": fairseq_cfg(cfg, data=data, arch=arch),
        "model": fairseq_model_state(cfg, ours),
        "criterion": None,
        "optimizer_history": [history],
        "task_state": {},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 0.0,
            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
            "val_loss": best,
        },
    }


def load_fairseq_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Safely load a fairseq ``.pt`` file and convert it (``(ModelConfig, one-piece state dict)``)."""
    return fairseq_to_ours(safe_load(path))


def save_fairseq_checkpoint(
    path: str | os.PathLike, cfg: ModelConfig, ours: Mapping[str, torch.Tensor], **fields: Any
) -> None:
    """Write :func:`ours_to_fairseq` (``fields``: its keyword options) to ``path`` (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ours_to_fairseq(cfg, ours, **fields), tmp)
    os.replace(tmp, path)
