"""fairseq ``transformer_lm`` checkpoints <-> our consolidated :class:`AdaptiveLM` state dict, both ways.

The architecture is read from the checkpoint itself: hyperparameters from its ``cfg["model"]`` (a plain
dict, newer releases) or ``args`` (an ``argparse.Namespace``, older releases), shapes from the tensors,
which win and are cross-checked (vocabulary, cutoffs, band dims, layers, FFN width). Never a preset.

One table, :func:`key_map`, lists every fairseq tensor and the tensor(s) of ours it is: a plain copy, a
concatenation along dim 0 (legacy fused ``in_proj_weight`` = q|k|v; an untied adaptive-softmax
``head.weight`` = band-0 words | cluster logits) or an *alias* (fairseq stores tied weights under both
names; we store them once). Conversion in either direction walks that table, so the two directions
cannot disagree. Keys the table does not know stop the conversion with their names.
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_lm_ds.config import ConfigError, ModelConfig
from adaptive_lm_ds.interop.safe_load import safe_load

D = "decoder."
SCRATCH_SUFFIXES = ("._float_tensor",)  # fairseq's uninitialised device-placeholder buffers
VERSION_KEYS = (D + "version", D + "adaptive_softmax.version")
UNSUPPORTED_FLAGS = (  # fairseq options this model does not implement: stop when they are on
    "character_embeddings",
    "layernorm_embedding",
    "no_token_positional_embeddings",
    "cross_self_attention",
    "scale_fc",
    "scale_attn",
    "scale_heads",
    "scale_resids",
    "base_layers",
    "decoder_xformers_att_config",
    "quant_noise_pq",
    "quant_noise_scalar",
)


class FairseqConversionError(ValueError):
    """A fairseq checkpoint this converter cannot map; the message names the keys or options."""


@dataclass(frozen=True)
class Entry:
    """fairseq tensor ``fairseq`` = ``cat([ours...], dim=0)`` (one name: a copy); ``alias``: a second name."""

    fairseq: str
    ours: tuple[str, ...]
    alias: bool = False


# ===================================================================== architecture


def model_args(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The model hyperparameters: ``cfg["model"]`` (dict or Namespace) or, for older files, ``args``."""
    cfg = checkpoint.get("cfg")
    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    if model is None:
        model = checkpoint.get("args")
    if isinstance(model, argparse.Namespace):
        model = vars(model)
    if not isinstance(model, Mapping):
        raise FairseqConversionError(
            "checkpoint has neither cfg['model'] nor args: not a fairseq model checkpoint (or saved without its config)"
        )
    return dict(model)


def _cutoffs(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(int(c) for c in value.split(",") if c.strip())
    return tuple(int(c) for c in value)


def _band_edges(sizes: list[int]) -> tuple[int, ...]:
    edges, total = [], 0
    for size in sizes[:-1]:
        total += size
        edges.append(total)
    return tuple(edges)


def _numbered(state: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> list[torch.Tensor]:
    """``state[prefix + i + suffix]`` for i = 0, 1, ... while present."""
    out = []
    while f"{prefix}{len(out)}{suffix}" in state:
        out.append(state[f"{prefix}{len(out)}{suffix}"])
    return out


def _check_factor(name: str, dims: list[int], d: int, factor: float) -> None:
    expected = [int(d // factor**i) for i in range(len(dims))]
    if dims != expected:
        raise FairseqConversionError(
            f"{name}: band dims {dims} in the weights differ from embed_dim {d} // {factor}**i = {expected}"
        )


def infer_config(args: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """:class:`ModelConfig` of a fairseq ``transformer_lm`` from its hyperparameters and tensor shapes."""
    arch = args.get("_name") or args.get("arch") or "?"
    for flag in UNSUPPORTED_FLAGS:
        if args.get(flag):
            raise FairseqConversionError(f"{arch}: option {flag}={args[flag]!r} is not supported by adaptive_lm_ds")
    if not args.get("decoder_normalize_before", False):
        raise FairseqConversionError(f"{arch}: post-norm decoders (decoder_normalize_before=False) are not supported")
    d = int(args["decoder_embed_dim"])
    for name in ("decoder_input_dim", "decoder_output_dim"):
        if args.get(name) not in (None, d):
            raise FairseqConversionError(f"{arch}: {name}={args[name]} != decoder_embed_dim={d} is not supported")
    activation = args.get("activation_fn") or "relu"
    if activation not in ("relu", "gelu"):
        raise FairseqConversionError(f"{arch}: activation_fn={activation!r} is not supported (relu or gelu)")
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith(D + "layers.")})
    if layers != list(range(len(layers))) or (args.get("decoder_layers") not in (None, len(layers))):
        raise FairseqConversionError(
            f"{arch}: layer indices {layers} do not match decoder_layers={args.get('decoder_layers')}"
        )
    ffn = state[D + "layers.0.fc1.weight"].shape[0] if layers else int(args["decoder_ffn_embed_dim"])
    pad = 1
    learned = bool(args.get("decoder_learned_pos", False))
    max_positions = int(args.get("max_target_positions") or args.get("tokens_per_sample") or 0)
    if learned:
        max_positions = state[D + "embed_positions.weight"].shape[0] - pad - 1

    input_tables = _numbered(state, D + "embed_tokens.embeddings.", ".0.weight")
    adaptive_input = bool(input_tables)
    if adaptive_input:
        in_sizes = [t.shape[0] for t in input_tables]
        in_factor = float(args.get("adaptive_input_factor", 4.0))
        _check_factor("adaptive input", [t.shape[1] for t in input_tables], d, in_factor)
    else:
        in_sizes, in_factor = [state[D + "embed_tokens.weight"].shape[0]], 4.0

    adaptive_softmax = any(k.startswith(D + "adaptive_softmax.") for k in state)
    tie_weights = tie_proj = False
    out_factor = float(args.get("adaptive_softmax_factor", 4.0))
    if adaptive_softmax:
        tails = _numbered(state, D + "adaptive_softmax.tail.", ".2.weight")
        tie_weights = D + "adaptive_softmax.head.word_proj.weight" in state
        head_words = (
            state[D + "adaptive_softmax.head.word_proj.weight"].shape[0]
            if tie_weights
            else state[D + "adaptive_softmax.head.weight"].shape[0] - len(tails)
        )
        out_sizes = [head_words] + [t.shape[0] for t in tails]
        _check_factor("adaptive softmax", [d] + [t.shape[1] for t in tails], d, out_factor)
        tie_proj = bool(tails) and tuple(state[D + "adaptive_softmax.tail.0.0.weight"].shape) == (d, tails[0].shape[1])
        for flag, found in (("tie_adaptive_weights", tie_weights), ("tie_adaptive_proj", tie_proj)):
            if flag in args and bool(args[flag]) != found:
                raise FairseqConversionError(f"{arch}: {flag}={args[flag]} but the tensors say {found}")
    else:
        out_sizes = [sum(in_sizes)]
    vocab = sum(in_sizes)
    if sum(out_sizes) != vocab:
        raise FairseqConversionError(f"{arch}: input vocabulary {vocab} != output vocabulary {sum(out_sizes)}")
    try:
        return ModelConfig(
            vocab_size=vocab,
            embed_dim=d,
            ffn_dim=int(ffn),
            num_layers=len(layers),
            num_heads=int(args["decoder_attention_heads"]),
            activation_fn=activation,
            dropout=float(args.get("dropout", 0.1)),
            attention_dropout=float(args.get("attention_dropout", 0.0)),
            activation_dropout=float(args.get("activation_dropout") or args.get("relu_dropout") or 0.0),
            learned_pos=learned,
            max_positions=max_positions,
            no_scale_embedding=bool(args.get("no_scale_embedding", False)),
            final_norm=D + "layer_norm.weight" in state,
            padding_idx=pad,
            adaptive_input=adaptive_input,
            adaptive_input_cutoffs=_band_edges(in_sizes) if adaptive_input else (),
            adaptive_input_factor=in_factor,
            adaptive_softmax=adaptive_softmax,
            adaptive_softmax_cutoffs=_band_edges(out_sizes) if adaptive_softmax else (),
            adaptive_softmax_factor=out_factor,
            adaptive_softmax_dropout=float(args.get("adaptive_softmax_dropout", 0.0)),
            tie_adaptive_weights=tie_weights,
            tie_adaptive_proj=tie_proj,
            share_input_output_embed=bool(args.get("share_decoder_input_output_embed", False)),
        ).validate()
    except ConfigError as err:
        raise FairseqConversionError(f"{arch}: unsupported architecture: {err}") from None


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
    """Every fairseq model tensor of ``cfg`` and what it is in our consolidated state dict."""
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
    """``(ModelConfig, consolidated state dict)`` of a loaded fairseq checkpoint (see :func:`safe_load`)."""
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


def fairseq_model_args(cfg: ModelConfig) -> dict[str, Any]:
    """``cfg["model"]`` as fairseq writes it for ``transformer_lm`` (strings for cutoffs, plain values)."""

    def cut(values: tuple[int, ...], on: bool) -> str | None:
        return ",".join(str(c) for c in values) if on else None

    return {
        "_name": "transformer_lm",
        "activation_fn": cfg.activation_fn,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "relu_dropout": 0.0,
        "decoder_embed_dim": cfg.embed_dim,
        "decoder_output_dim": cfg.embed_dim,
        "decoder_input_dim": cfg.embed_dim,
        "decoder_ffn_embed_dim": cfg.ffn_dim,
        "decoder_layers": cfg.num_layers,
        "decoder_attention_heads": cfg.num_heads,
        "decoder_normalize_before": True,
        "no_decoder_final_norm": not cfg.final_norm,
        "adaptive_softmax_cutoff": cut(cfg.adaptive_softmax_cutoffs, cfg.adaptive_softmax),
        "adaptive_softmax_dropout": cfg.adaptive_softmax_dropout,
        "adaptive_softmax_factor": cfg.adaptive_softmax_factor,
        "no_token_positional_embeddings": False,
        "share_decoder_input_output_embed": cfg.share_input_output_embed,
        "character_embeddings": False,
        "adaptive_input": cfg.adaptive_input,
        "adaptive_input_factor": cfg.adaptive_input_factor,
        "adaptive_input_cutoff": cut(cfg.adaptive_input_cutoffs, cfg.adaptive_input),
        "tie_adaptive_weights": cfg.tie_adaptive_weights,
        "tie_adaptive_proj": cfg.tie_adaptive_proj,
        "decoder_learned_pos": cfg.learned_pos,
        "layernorm_embedding": False,
        "no_scale_embedding": cfg.no_scale_embedding,
        "decoder_layerdrop": 0.0,
        "quant_noise_pq": 0.0,
        "quant_noise_scalar": 0.0,
        "add_bos_token": False,
        "tokens_per_sample": cfg.max_positions,
        "max_target_positions": cfg.max_positions,
    }


def ours_to_fairseq(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A checkpoint dict in the layout fairseq's trainer saves (``args`` None, ``cfg`` of plain dicts)."""
    expected = {name for e in key_map(cfg) for name in e.ours}
    missing, extra = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or extra:
        raise FairseqConversionError(
            f"state dict does not match the config: missing {missing[:8]}, unexpected {extra[:8]}"
        )
    model = fairseq_model_args(cfg)
    task = {
        "_name": "language_modeling",
        "data": "",
        "sample_break_mode": "none",
        "tokens_per_sample": cfg.max_positions,
        "output_dictionary_size": -1,
        "self_target": False,
        "future_target": False,
        "past_target": False,
        "add_bos_token": False,
        "max_target_positions": None,
    }
    criterion = {"_name": "adaptive_loss" if cfg.adaptive_softmax else "cross_entropy", "sentence_avg": False}
    return {
        "args": None,
        "cfg": {"_name": None, "model": model, "task": task, "criterion": criterion},
        "model": fairseq_model_state(cfg, ours),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "AdaptiveLoss", "optimizer_name": "none", "num_updates": 0}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1}, "val_loss": None},
        "last_optimizer_state": None,
    }


def load_fairseq_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Safely load a fairseq ``.pt`` file and convert it (``(ModelConfig, consolidated state dict)``)."""
    return fairseq_to_ours(safe_load(path))


def save_fairseq_checkpoint(path: str | os.PathLike, cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> None:
    """Write :func:`ours_to_fairseq` to ``path`` (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ours_to_fairseq(cfg, ours), tmp)
    os.replace(tmp, path)
