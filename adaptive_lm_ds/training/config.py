"""Typed training configuration and its command line, one flag per field.

Flag names are fairseq's (``--max-tokens``, ``--update-freq``, ``--lr-period-updates``, ...) so a
fairseq recipe's command line maps over unchanged, and Megatron's for the layout
(``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``). DeepSpeed owns its JSON
(``--deepspeed_config``); we never mirror its keys here. ``--recipe`` (training/recipes.py) picks the
defaults the flags start from; the two recipe programs only preset it.

fairseq-train's own command line runs too: the data dir may come first as a positional argument,
``--arch`` names a fairseq ``transformer_lm*`` arch and fairseq's model flags refine it (or the
preset), ``--task``, ``--criterion``, ``--ddp-backend`` and ``--skip-invalid-size-inputs-valid-test``
are accepted, and the fairseq flags with no counterpart stop with one line naming the equivalent
(training/fairseq_flags.py). No flag may be abbreviated.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from adaptive_lm_ds import cli
from adaptive_lm_ds.cli import flag as _f
from adaptive_lm_ds.config import ACTIVATIONS, PRESETS, ModelConfig, get_preset
from adaptive_lm_ds.data import BATCH_ORDERS, BREAK_MODES
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.interop.fairseq_cfg import arch_model_config, fairseq_archs, refine
from adaptive_lm_ds.metrics_log import LOG_FORMATS
from adaptive_lm_ds.optim.config import OptimConfig
from adaptive_lm_ds.training.fairseq_flags import add_fairseq_compat
from adaptive_lm_ds.training.recipes import RECIPES


@dataclass
class DataConfig:
    data: str = _f(
        "",
        "data-bin folder written by adaptive-lm-preprocess (either MMIDIDX layout); may also "
        "come first, as fairseq-train's positional DATA",
    )
    task: str = _f(
        "language_modeling", "fairseq's --task: language modeling is the one task here", choices=("language_modeling",)
    )
    train_subset: str = _f("train", "split to train on")
    valid_subset: str = _f("valid", "split to validate on")
    tokens_per_sample: int = _f(512, "tokens per sample (block size)")
    sample_break_mode: str = _f(
        "none",
        "none: fixed blocks over the stream; complete: whole sentences packed up to the block; "
        "eos: one sentence per sample; packed: sentences packed with block-diagonal attention",
        choices=BREAK_MODES,
    )
    max_tokens: int = _f(0, "tokens per micro batch per data-parallel rank (0: use --batch-size)")
    batch_size: int = _f(0, "sequences per micro batch (0: derived from --max-tokens)")
    update_freq: int = _f(1, "micro batches accumulated per update (gradient accumulation)")
    batch_order: str = _f(
        "ours",
        "ours: a seeded permutation in full --max-tokens/--batch-size micro batches; fairseq: fairseq-train's "
        "batches for the same command line (its size-sorted batching, seeded shuffles and DP sharding), padded "
        "to the micro batch, so a fairseq run continues on the batches it would have used",
        choices=BATCH_ORDERS,
    )
    required_batch_size_multiple: int | None = _f(
        None, "fairseq's batch-size multiple, for --batch-order fairseq only (default: fairseq's 8)"
    )
    num_workers: int = _f(0, "data loader worker processes")
    skip_invalid_size_inputs_valid_test: bool = _f(
        False,
        "accepted for fairseq command lines; here samples longer than --tokens-per-sample (eos, complete, "
        "packed modes) are always left out of training and validation, which is what this flag asks of fairseq",
    )


@dataclass
class RunConfig:
    preset: str = _f("tiny", "model preset (see --arch)", choices=tuple(PRESETS))
    arch: str = _f(
        "",
        "a fairseq transformer_lm* arch (transformer_lm_wiki103, transformer_lm_gbw, ...): the model is that "
        "arch's hyperparameters, refined by fairseq's model flags, instead of --preset. One of: "
        + ", ".join(fairseq_archs()),
        choices=("", *fairseq_archs()),
        metavar="ARCH",
    )
    ddp_backend: str = _f(
        "pytorch_ddp",
        "accepted for fairseq command lines and ignored: gradients are always reduced by "
        "DeepSpeed's engine here (data parallel over the DP group, ZeRO as --deepspeed_config says), with "
        "fairseq's per-token normalisation; no value changes the arithmetic",
        choices=("c10d", "pytorch_ddp", "legacy_ddp", "no_c10d", "fully_sharded", "slowmo"),
    )
    max_update: int = _f(286000, "stop after this many updates")
    stop_time_hours: float = _f(0.0, "stop after this much wall-clock time (0: no limit)")
    seed: int = _f(1, "random seed (model init, dropout, data order)")
    tensor_model_parallel_size: int = _f(1, "tensor-parallel ranks per model replica")
    pipeline_model_parallel_size: int = _f(1, "pipeline stages per model replica")
    deepspeed_config: str = _f("", "DeepSpeed JSON (ZeRO stage, bf16/fp16, offload, pipeline); see ds_configs/")
    checkpoint_activations: bool = _f(False, "recompute each transformer block in the backward pass")
    compile: bool = _f(False, "torch.compile each transformer block (regional compilation; helps most on GPU)")
    save_dir: str = _f("checkpoints", "where checkpoints go; rerunning with the same folder resumes")
    save_interval_updates: int = _f(1000, "save a checkpoint every N updates (0: only at the end)")
    keep_last_n: int = _f(5, "keep only the newest N update checkpoints (-1: all)")
    no_save: bool = _f(False, "do not save checkpoints")
    restore_file: str = _f(
        "checkpoint_last",
        "checkpoint tag (or path) to resume from when it exists; a fairseq checkpoint file (FILE.pt) continues "
        "that fairseq run here mid-schedule, on fairseq's batch order",
    )
    reset_optimizer: bool = _f(False, "resume weights only: fresh optimizer and lr schedule state")
    reset_dataloader: bool = _f(False, "resume weights but restart the data from the beginning")
    init_from: str = _f("", "consolidated model (adaptive-lm-convert or export) to start from")
    validate_interval_updates: int = _f(1000, "validate every N updates (0: only at the end)")
    max_valid_steps: int = _f(0, "cap on validation batches (0: the whole split)")
    tensorboard_logdir: str = _f("", "tensorboard event folder (empty: none)")
    log_interval: int = _f(100, "log every N updates")
    log_format: str = _f("simple", "console log format", choices=LOG_FORMATS)
    max_consecutive_nan: int = _f(10, "abort after this many non-finite losses in a row")
    peak_tflops: float = _f(0.0, "per-device dense peak for the MFU estimate (0: known GPUs by name, none on CPU)")


_SHAPE = "fairseq model flag: refines --arch or --preset"


@dataclass
class ModelOverrides:
    """fairseq's model flags, under fairseq's names: each one given refines the arch or preset.

    Regularisation (dropouts; -1 keeps the model's value) also refines an --init-from model; shape
    flags cannot (the weights fix the shape). Boolean flags can only switch an option on, as in fairseq.
    """

    dropout: float = _f(-1.0, "dropout on the residual stream and embeddings (-1: the model's)")
    attention_dropout: float = _f(-1.0, "dropout on attention probabilities (-1: the model's)")
    activation_dropout: float = _f(-1.0, "dropout after the FFN activation (-1: the model's)")
    adaptive_softmax_dropout: float = _f(-1.0, "dropout in the adaptive-softmax tails (-1: the model's)")
    decoder_layers: int | None = _f(None, _SHAPE)
    decoder_embed_dim: int | None = _f(None, _SHAPE)
    decoder_input_dim: int | None = _f(None, _SHAPE + " (must equal the embed dim: no input projection)")
    decoder_output_dim: int | None = _f(None, _SHAPE + " (must equal the embed dim: no output projection)")
    decoder_ffn_embed_dim: int | None = _f(None, _SHAPE)
    decoder_attention_heads: int | None = _f(None, _SHAPE)
    activation_fn: str | None = _f(None, _SHAPE, choices=ACTIVATIONS)
    adaptive_input: bool = _f(False, _SHAPE)
    adaptive_input_cutoff: str | None = _f(None, _SHAPE + " (comma-separated)")
    adaptive_input_factor: float | None = _f(None, _SHAPE)
    adaptive_softmax_cutoff: str | None = _f(None, _SHAPE + " (comma-separated; turns the adaptive softmax on)")
    adaptive_softmax_factor: float | None = _f(None, _SHAPE)
    tie_adaptive_weights: bool = _f(False, _SHAPE)
    tie_adaptive_proj: bool = _f(False, _SHAPE)
    share_decoder_input_output_embed: bool = _f(False, _SHAPE)
    decoder_learned_pos: bool = _f(False, _SHAPE)
    no_decoder_final_norm: bool = _f(False, _SHAPE)
    no_scale_embedding: bool = _f(False, _SHAPE)
    max_target_positions: int | None = _f(None, _SHAPE + " (default: --tokens-per-sample under --arch)")

    def regularisation(self) -> dict[str, float]:
        names = ("dropout", "attention_dropout", "activation_dropout", "adaptive_softmax_dropout")
        return {n: getattr(self, n) for n in names if getattr(self, n) >= 0}

    def shape_flags(self) -> dict[str, Any]:
        """The shape flags given (fairseq names): not None, booleans only when switched on."""
        skip = set(self.regularisation()) | {"dropout", "attention_dropout", "activation_dropout",
                                              "adaptive_softmax_dropout"}  # fmt: skip
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) not in (None, False)
        }


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelOverrides = field(default_factory=ModelOverrides)
    run: RunConfig = field(default_factory=RunConfig)

    def sections(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# Other spellings users bring from DeepSpeed and fairseq, accepted beside ours.
ALIASES = {"deepspeed_config": ["--deepspeed_config"], "keep_last_n": ["--keep-interval-updates"]}


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The model to train from scratch: ``--arch`` (fairseq's) or ``--preset``, refined by fairseq's model flags."""
    flags = {**cfg.model.shape_flags(), **cfg.model.regularisation()}
    if cfg.run.arch:
        return arch_model_config(cfg.run.arch, vocab_size, flags, cfg.data.tokens_per_sample)
    return refine(get_preset(cfg.run.preset, vocab_size=vocab_size), flags, f"--preset {cfg.run.preset}")


def _flags(name: str) -> list[str]:
    return ["--" + name.replace("_", "-"), *ALIASES.get(name, [])]


def _field_names() -> set[str]:
    return {f.name for s in dataclasses.fields(TrainConfig) for f in dataclasses.fields(s.default_factory)}


def _plain_type(tp: Any) -> type:
    if isinstance(tp, str):  # postponed annotations: "int", "int | None", ...
        return {"int": int, "float": float, "str": str, "bool": bool}[tp.split("|")[0].strip()]
    if get_origin(tp) is not None:
        return next(t for t in get_args(tp) if t is not type(None))
    return tp


RECIPE_HELP = "start from this recipe's flag defaults (training/recipes.py); flags given still win"


def build_parser(
    description: str, defaults: dict[str, Any] | None = None, recipe: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`TrainConfig` field; ``recipe``'s defaults (training/recipes.py)
    and then ``defaults`` override ours."""
    defaults = {**(RECIPES[recipe].defaults if recipe else {}), **(defaults or {})}
    parser = cli.rank_parser(description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_fairseq_compat(parser)
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=recipe, help=RECIPE_HELP)
    for section in dataclasses.fields(TrainConfig):
        group = parser.add_argument_group(section.name)
        for f in dataclasses.fields(section.default_factory):
            default = defaults.get(f.name, f.default)
            extra = {k: v for k, v in f.metadata.items() if k != "help"}
            tp = extra.pop("type", None) or _plain_type(f.type)  # a field's own parser, else its plain type
            if tp is bool:
                group.add_argument(*_flags(f.name), action="store_true", default=default, help=f.metadata["help"])
            else:
                group.add_argument(*_flags(f.name), type=tp, default=default, help=f.metadata["help"], **extra)
    unknown = set(defaults) - _field_names()
    if unknown:
        raise ValueError(f"launcher defaults name unknown options: {sorted(unknown)}")
    return parser


def parse_args(argv: list[str] | None, recipe: str | None = None) -> argparse.Namespace:
    """Parse a training command line; ``--recipe NAME`` (else ``recipe``) picks the defaults flags start from."""
    first = cli.parser(add_help=False)
    first.add_argument("--recipe", choices=tuple(RECIPES), default=recipe)
    chosen = first.parse_known_args(argv)[0].recipe
    description = RECIPES[chosen].description if chosen else "Train an adaptive-input LM"
    return build_parser(description, recipe=chosen).parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The typed config from parsed flags (the inverse of :func:`build_parser`)."""
    values = vars(args)
    positional = values.get("data_positional")
    if positional:
        if values["data"] and values["data"] != positional:
            raise UserError(f"two data dirs given: {positional} (positional) and --data {values['data']}")
        values = {**values, "data": positional}
    return TrainConfig(
        **{
            s.name: s.default_factory(**{f.name: values[f.name] for f in dataclasses.fields(s.default_factory)})
            for s in dataclasses.fields(TrainConfig)
        }
    )
