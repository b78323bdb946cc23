"""fairseq ``transformer_lm`` hyperparameters <-> :class:`ModelConfig`, both ways.

Reading: hyperparameters from a checkpoint's ``cfg["model"]`` (a plain dict, newer releases) or ``args``
(an ``argparse.Namespace``, older releases), shapes from its tensors, which win and are cross-checked
(vocabulary, cutoffs, band dims, layers, FFN width). Never a preset. Writing: the ``cfg["model"]``
dict fairseq itself would save for the config is :mod:`adaptive_lm_ds.interop.fairseq_cfg`. The
tensors' key mapping is :mod:`adaptive_lm_ds.interop.fairseq`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

from adaptive_lm_ds.config import ACTIVATIONS, ConfigError, ModelConfig
from adaptive_lm_ds.errors import UserError

D = "decoder."
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


class FairseqConversionError(UserError, ValueError):
    """A fairseq checkpoint this converter cannot map; the message names the keys or options."""


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
    if activation not in ACTIVATIONS:
        raise FairseqConversionError(
            f"{arch}: activation_fn={activation!r} is not supported ({' or '.join(ACTIVATIONS)})"
        )
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
