"""Typed training configuration and its command line, one flag per field.

Flag names are fairseq's (``--max-tokens``, ``--update-freq``, ``--lr-period-updates``, ...) so a
fairseq recipe's command line maps over unchanged, and Megatron's for the layout
(``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``). DeepSpeed owns its JSON
(``--deepspeed_config``); we never mirror its keys here. The two launchers differ only in the
defaults they pass to :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field that carries its ``--help`` text (and argparse extras such as choices)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    data: str = _f("", "data-bin folder written by tools/preprocess_data.py (either MMIDIDX layout)")
    train_subset: str = _f("train", "split to train on")
    valid_subset: str = _f("valid", "split to validate on")
    tokens_per_sample: int = _f(512, "tokens per sample (block size)")
    sample_break_mode: str = _f(
        "none",
        "none: fixed blocks over the stream; complete: whole sentences packed up to the block; "
        "eos: one sentence per sample; packed: sentences packed with block-diagonal attention",
        choices=("none", "complete", "eos", "packed"),
    )
    max_tokens: int = _f(0, "tokens per micro batch per data-parallel rank (0: use --batch-size)")
    batch_size: int = _f(0, "sequences per micro batch (0: derived from --max-tokens)")
    update_freq: int = _f(1, "micro batches accumulated per update (gradient accumulation)")
    num_workers: int = _f(0, "data loader worker processes")


@dataclass
class OptimConfig:
    optimizer: str = _f("nag", "optimizer", choices=("nag", "adam", "adamw"))
    lr: float = _f(1.0, "peak learning rate")
    momentum: float = _f(0.99, "NAG momentum")
    weight_decay: float = _f(0.0, "weight decay")
    adam_betas: str = _f("(0.9, 0.98)", "Adam betas, as fairseq writes them")
    adam_eps: float = _f(1e-8, "Adam epsilon")
    clip_norm: float = _f(0.1, "clip gradients to this global norm (0: off)")
    lr_scheduler: str = _f("cosine", "learning-rate schedule", choices=("cosine", "inverse_sqrt", "fixed"))
    warmup_updates: int = _f(16000, "linear warmup updates")
    warmup_init_lr: float = _f(1e-7, "lr at update 0 (-1: start at --min-lr)")
    min_lr: float = _f(1e-4, "cosine: minimum lr of the first period")
    t_mult: float = _f(2.0, "cosine: factor by which each period is longer than the previous")
    lr_period_updates: int = _f(270000, "cosine: updates in the first period (-1: max-update - warmup)")
    lr_shrink: float = _f(0.75, "cosine: factor applied to lr and min-lr at each restart")
    stop_min_lr: float = _f(1e-9, "stop training once the lr falls to this value")


@dataclass
class RunConfig:
    preset: str = _f("tiny", "model preset", choices=("tiny", "wiki103", "gbw_large", "gbw_huge"))
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
    restore_file: str = _f("checkpoint_last", "checkpoint tag (or path) to resume from when it exists")
    reset_optimizer: bool = _f(False, "resume weights only: fresh optimizer and lr schedule state")
    reset_dataloader: bool = _f(False, "resume weights but restart the data from the beginning")
    init_from: str = _f("", "consolidated model (tools/convert_fairseq_ckpt.py or export) to start from")
    validate_interval_updates: int = _f(1000, "validate every N updates (0: only at the end)")
    max_valid_steps: int = _f(0, "cap on validation batches (0: the whole split)")
    tensorboard_logdir: str = _f("", "tensorboard event folder (empty: none)")
    log_interval: int = _f(100, "log every N updates")
    log_format: str = _f("simple", "console log format", choices=("simple", "json"))
    max_consecutive_nan: int = _f(10, "abort after this many non-finite losses in a row")
    peak_tflops: float = _f(0.0, "per-device dense peak for the MFU estimate (0: known GPUs by name, none on CPU)")


@dataclass
class ModelOverrides:
    """Regularisation knobs that override the preset (or --init-from model); -1 keeps its value."""

    dropout: float = _f(-1.0, "dropout on the residual stream and embeddings (-1: the preset's)")
    attention_dropout: float = _f(-1.0, "dropout on attention probabilities (-1: the preset's)")
    activation_dropout: float = _f(-1.0, "dropout after the FFN activation (-1: the preset's)")
    adaptive_softmax_dropout: float = _f(-1.0, "dropout in the adaptive-softmax tails (-1: the preset's)")

    def changes(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) >= 0}


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


def _flags(name: str) -> list[str]:
    return ["--" + name.replace("_", "-"), *ALIASES.get(name, [])]


def _field_names() -> set[str]:
    return {f.name for s in dataclasses.fields(TrainConfig) for f in dataclasses.fields(s.default_factory)}


def _plain_type(tp: Any) -> type:
    if isinstance(tp, str):
        return {"int": int, "float": float, "str": str, "bool": bool}[tp]
    if get_origin(tp) is not None:
        return next(t for t in get_args(tp) if t is not type(None))
    return tp


def build_parser(description: str, defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`TrainConfig` field; ``defaults`` override ours."""
    defaults = defaults or {}
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for section in dataclasses.fields(TrainConfig):
        group = parser.add_argument_group(section.name)
        for f in dataclasses.fields(section.default_factory):
            default = defaults.get(f.name, f.default)
            tp = _plain_type(f.type)
            extra = {k: v for k, v in f.metadata.items() if k != "help"}
            if tp is bool:
                group.add_argument(*_flags(f.name), action="store_true", default=default, help=f.metadata["help"])
            else:
                group.add_argument(*_flags(f.name), type=tp, default=default, help=f.metadata["help"], **extra)
    # DeepSpeed's launcher passes --local_rank to every rank.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    unknown = set(defaults) - _field_names()
    if unknown:
        raise ValueError(f"launcher defaults name unknown options: {sorted(unknown)}")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The typed config from parsed flags (the inverse of :func:`build_parser`)."""
    values = vars(args)
    return TrainConfig(
        **{
            s.name: s.default_factory(**{f.name: values[f.name] for f in dataclasses.fields(s.default_factory)})
            for s in dataclasses.fields(TrainConfig)
        }
    )
