"""fairseq's configuration as fairseq itself writes it: ``transformer_lm*`` archs <-> :class:`ModelConfig`.

``fairseq_defaults.json`` (beside this file) is the cfg that fairseq 0.12.2 (commit 3d262bb2) builds
for the paper's recipe: every section of ``checkpoint["cfg"]`` for ``fairseq-train --task
language_modeling --criterion adaptive_loss --optimizer nag --lr-scheduler cosine --ddp-backend
legacy_ddp``, and ``cfg["model"]`` of every ``transformer_lm*`` arch with no model flag given. It is
data produced by ``tests/oracle_scripts/dump_fairseq_defaults.py`` under the real fairseq, and an oracle
test checks it still is. Two uses:

* **Writing** (``--to-fairseq``): :func:`fairseq_cfg` is that complete cfg with the model's own values
  over the arch's (51 model keys, ``_name`` = the arch, every section, ``task.data``), so fairseq's
  loaders (eval-lm, ``--restore-file``, ``--finetune-from-model``) find every key they read.
* **Reading a command line** (``--arch transformer_lm_wiki103 --decoder-layers 2 ...``):
  :func:`arch_model_config` is the :class:`ModelConfig` fairseq would build from the arch and the
  model flags that refine it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adaptive_lm_ds.config import ConfigError, ModelConfig

DEFAULTS_FILE = Path(__file__).with_name("fairseq_defaults.json")


class FairseqArchError(ConfigError):
    """An arch or model flag this model cannot build; the message names it."""


@functools.lru_cache(maxsize=1)
def fairseq_defaults() -> dict[str, Any]:
    return json.loads(DEFAULTS_FILE.read_text())


def fairseq_archs() -> list[str]:
    """fairseq's ``transformer_lm*`` arch names (what ``--arch`` accepts)."""
    return sorted(fairseq_defaults()["models"])


def _cutoffs(value: Any) -> tuple[int, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return tuple(int(x) for x in value.split(",") if x.strip())
    return tuple(int(x) for x in value)


# fairseq model option -> ModelConfig field, where the two are one value under two names
_SAME = {
    "decoder_embed_dim": "embed_dim", "decoder_ffn_embed_dim": "ffn_dim", "decoder_layers": "num_layers",
    "decoder_attention_heads": "num_heads", "activation_fn": "activation_fn", "dropout": "dropout",
    "attention_dropout": "attention_dropout", "activation_dropout": "activation_dropout",
    "decoder_learned_pos": "learned_pos", "no_scale_embedding": "no_scale_embedding",
    "adaptive_input": "adaptive_input", "adaptive_input_factor": "adaptive_input_factor",
    "adaptive_softmax_factor": "adaptive_softmax_factor", "adaptive_softmax_dropout": "adaptive_softmax_dropout",
    "tie_adaptive_weights": "tie_adaptive_weights", "tie_adaptive_proj": "tie_adaptive_proj",
    "share_decoder_input_output_embed": "share_input_output_embed", "max_target_positions": "max_positions",
}  # fmt: skip


def model_fields(args: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`ModelConfig` fields of the fairseq model options in ``args`` (only those present and not None).

    ``decoder_input_dim``/``decoder_output_dim`` are checked by :func:`check_io_dims`, not mapped: this
    model has no projection around the decoder.
    """
    out: dict[str, Any] = {}
    for name, field in _SAME.items():
        if args.get(name) is not None:
            out[field] = args[name]
    if "adaptive_input_cutoff" in args:
        out["adaptive_input_cutoffs"] = _cutoffs(args["adaptive_input_cutoff"])
    if "adaptive_softmax_cutoff" in args:
        out["adaptive_softmax_cutoffs"] = _cutoffs(args["adaptive_softmax_cutoff"])
        out["adaptive_softmax"] = bool(out["adaptive_softmax_cutoffs"])
    if args.get("no_decoder_final_norm") is not None:
        out["final_norm"] = not args["no_decoder_final_norm"]
    return out


def check_io_dims(cfg: ModelConfig, flags: Mapping[str, Any]) -> None:
    for name in ("decoder_input_dim", "decoder_output_dim"):
        if flags.get(name) is not None and int(flags[name]) != cfg.embed_dim:
            raise FairseqArchError(
                f"--{name.replace('_', '-')} {flags[name]} differs from the decoder width {cfg.embed_dim}: "
                "input/output projections around the decoder are not implemented; give them equal"
            )


def arch_model_config(arch: str, vocab_size: int, flags: Mapping[str, Any], tokens_per_sample: int) -> ModelConfig:
    """The model of fairseq ``--arch ARCH`` refined by fairseq model ``flags`` (fairseq names, set ones only).

    As fairseq: the arch's values, each overridden by a flag given; ``max_target_positions`` defaults
    to ``tokens_per_sample``.
    """
    models = fairseq_defaults()["models"]
    if arch not in models:
        raise FairseqArchError(f"--arch {arch} is not a fairseq transformer_lm arch; choose one of {', '.join(models)}")
    if not models[arch].get("decoder_normalize_before", True):
        raise FairseqArchError(f"--arch {arch}: post-norm decoders are not implemented (fairseq LMs are pre-norm)")
    base = ModelConfig(vocab_size=vocab_size, **{**model_fields(models[arch]), "max_positions": tokens_per_sample})
    return refine(base, flags, f"--arch {arch}")


def refine(base: ModelConfig, flags: Mapping[str, Any], what: str) -> ModelConfig:
    """``base`` with the fairseq model ``flags`` applied, validated (one :class:`FairseqArchError` line)."""
    try:
        cfg = base.replace(**model_fields(flags))
        check_io_dims(cfg, flags)
        return cfg.validate()
    except ConfigError as err:
        raise FairseqArchError(f"{what} with the given model flags: {err}") from None


def arch_for(cfg: ModelConfig) -> str:
    """The fairseq arch whose family the model belongs to: the adaptive wiki103 recipe, else ``transformer_lm``."""
    if cfg.adaptive_input and cfg.adaptive_softmax and cfg.tie_adaptive_weights:
        return "transformer_lm_wiki103"
    return "transformer_lm"


def fairseq_model_args(cfg: ModelConfig, arch: str | None = None) -> dict[str, Any]:
    """``cfg["model"]`` as fairseq writes it: all the arch's keys, the model's own values where it has one."""
    arch = arch or arch_for(cfg)
    model = copy.deepcopy(fairseq_defaults()["models"][arch])

    def cut(values: tuple[int, ...], on: bool) -> str | None:
        return ",".join(str(c) for c in values) if on else None

    model.update(
        _name=arch,
        activation_fn=cfg.activation_fn,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        relu_dropout=0.0,
        decoder_embed_dim=cfg.embed_dim,
        decoder_output_dim=cfg.embed_dim,
        decoder_input_dim=cfg.embed_dim,
        decoder_ffn_embed_dim=cfg.ffn_dim,
        decoder_layers=cfg.num_layers,
        decoder_attention_heads=cfg.num_heads,
        decoder_normalize_before=True,
        no_decoder_final_norm=not cfg.final_norm,
        adaptive_softmax_cutoff=cut(cfg.adaptive_softmax_cutoffs, cfg.adaptive_softmax),
        adaptive_softmax_dropout=cfg.adaptive_softmax_dropout,
        adaptive_softmax_factor=cfg.adaptive_softmax_factor,
        share_decoder_input_output_embed=cfg.share_input_output_embed,
        adaptive_input=cfg.adaptive_input,
        adaptive_input_factor=cfg.adaptive_input_factor,
        adaptive_input_cutoff=cut(cfg.adaptive_input_cutoffs, cfg.adaptive_input),
        tie_adaptive_weights=cfg.tie_adaptive_weights,
        tie_adaptive_proj=cfg.tie_adaptive_proj,
        decoder_learned_pos=cfg.learned_pos,
        no_scale_embedding=cfg.no_scale_embedding,
        tokens_per_sample=cfg.max_positions,
        max_target_positions=cfg.max_positions,
    )
    return model


def fairseq_cfg(cfg: ModelConfig, data: str = "", arch: str | None = None) -> dict[str, Any]:
    """The complete ``checkpoint["cfg"]`` (every section) for the model; ``data`` is ``task.data``."""
    defaults = fairseq_defaults()["cfg"]
    sections = list(defaults)  # fairseq's order; "model" goes before "task", as fairseq writes it
    sections.insert(sections.index("task"), "model")
    out = {key: copy.deepcopy(defaults.get(key)) for key in sections}
    out["model"] = fairseq_model_args(cfg, arch)
    out["task"].update(data=data, tokens_per_sample=cfg.max_positions)
    if not cfg.adaptive_softmax:  # fairseq's adaptive_loss needs an adaptive softmax
        out["criterion"] = {"_name": "cross_entropy", "sentence_avg": False}
    return out


def criterion_class_name(cfg: ModelConfig) -> str:
    """The criterion class fairseq records in ``optimizer_history`` for this model's cfg."""
    return "AdaptiveLoss" if cfg.adaptive_softmax else "CrossEntropyCriterion"
