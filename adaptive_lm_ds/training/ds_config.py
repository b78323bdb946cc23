"""Complete the user's DeepSpeed JSON with what our flags decide, and refuse contradictions.

DeepSpeed owns its JSON: ZeRO stage, bf16/fp16 and loss scaling, offload, pipeline options stay
there. Our flags own the batch geometry (fairseq's ``--max-tokens``/``--batch-size`` and
``--update-freq``) and gradient clipping (``--clip-norm``). When the JSON also sets one of those to
a different value we stop with a message naming both, instead of silently preferring one.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptive_lm_ds.checkpoint.safe_files import refuse_self_loading_keys
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.memory import ZERO_BUCKET_ELEMENTS
from adaptive_lm_ds.training.config import TrainConfig


class TrainConfigError(UserError, ValueError):
    """A configuration that cannot run; the message says what to change."""

    same_on_every_rank = True  # follows from the flags alone: every rank raises it, rank 0 prints it


def micro_batch_sequences(cfg: TrainConfig) -> int:
    """Sequences per micro batch from fairseq's ``--max-tokens`` or ``--batch-size``.

    Called once per run, by :func:`build_ds_config`; everything else reads the result from the DeepSpeed
    config (``train_micro_batch_size_per_gpu``, and ``train_batch_size`` for the global batch).
    """
    data = cfg.data
    if data.tokens_per_sample < 2:
        raise TrainConfigError(f"--tokens-per-sample must be >= 2 (got {data.tokens_per_sample})")
    if data.batch_size > 0:
        if data.max_tokens and data.batch_size * data.tokens_per_sample > data.max_tokens:
            raise TrainConfigError(
                f"--batch-size {data.batch_size} x --tokens-per-sample {data.tokens_per_sample} exceeds "
                f"--max-tokens {data.max_tokens}; lower one of them"
            )
        return data.batch_size
    if data.max_tokens <= 0:
        raise TrainConfigError("set --max-tokens or --batch-size")
    if data.max_tokens < data.tokens_per_sample:
        raise TrainConfigError(
            f"--max-tokens {data.max_tokens} is smaller than one sample (--tokens-per-sample "
            f"{data.tokens_per_sample}); raise --max-tokens or lower --tokens-per-sample"
        )
    return data.max_tokens // data.tokens_per_sample


def load_ds_json(path: str) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise TrainConfigError(f"DeepSpeed config {path} does not exist; pass one of ds_configs/*.json")
    try:
        ds = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TrainConfigError(f"DeepSpeed config {path} is not valid JSON ({e}); fix the file") from None
    refuse_self_loading_keys(ds, path)
    return ds


def _set(ds: dict[str, Any], key: str, value: Any, flag: str) -> None:
    if key in ds and ds[key] not in (value, "auto"):
        raise TrainConfigError(
            f'DeepSpeed config sets "{key}": {ds[key]} but {flag} gives {value}; '
            f"remove the key from the JSON or change the flag"
        )
    ds[key] = value


def complete_ds_config(ds: dict[str, Any], micro: int, gas: int, dp_size: int, pp_size: int, clip_norm: float) -> dict:
    """``ds`` (a user's DeepSpeed JSON) completed with the batch geometry and clipping our flags decide."""
    ds = copy.deepcopy(ds)
    if gas < 1:
        raise TrainConfigError(f"--update-freq must be >= 1 (got {gas})")
    if "train_batch_size" in ds and "train_micro_batch_size_per_gpu" not in ds:
        raise TrainConfigError(
            "DeepSpeed config sets train_batch_size alone; set the batch with --max-tokens/--batch-size"
        )
    _set(ds, "train_micro_batch_size_per_gpu", micro, "--max-tokens/--batch-size")
    _set(ds, "gradient_accumulation_steps", gas, "--update-freq")
    _set(ds, "train_batch_size", micro * gas * dp_size, "micro batch x --update-freq x DP size")
    _set(ds, "gradient_clipping", float(clip_norm), "--clip-norm")
    ds.setdefault("zero_allow_untested_optimizer", True)  # NAG is ours, DeepSpeed does not know it
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage in (1, 2):  # DeepSpeed's 5e8-element default bucket is a 1-2 GB buffer per rank
        ds["zero_optimization"].setdefault("reduce_bucket_size", ZERO_BUCKET_ELEMENTS)
        # each rank receives only its partition's sum (a reduce-scatter's bytes), not every rank all of
        # them (DeepSpeed's default all-reduce of each bucket sends twice the bytes; comm_model.py)
        ds["zero_optimization"].setdefault("use_multi_rank_bucket_allreduce", False)
    if pp_size > 1 and stage > 1:
        raise TrainConfigError(
            f"ZeRO stage {stage} does not combine with pipeline parallelism in DeepSpeed; "
            "use ds_configs/pipeline_zero1*.json or --pipeline-model-parallel-size 1"
        )
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise TrainConfigError("DeepSpeed config enables both fp16 and bf16; keep one")
    return ds


def build_ds_config(cfg: TrainConfig, dp_size: int, pp_size: int, user_json: dict | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for this run: ``user_json`` (default: the ``--deepspeed_config`` file)
    completed with the batch geometry and clipping."""
    ds = load_ds_json(cfg.run.deepspeed_config) if user_json is None else user_json
    micro = micro_batch_sequences(cfg)
    return complete_ds_config(ds, micro, cfg.data.update_freq, dp_size, pp_size, cfg.optim.clip_norm)


def precision(ds: dict[str, Any]) -> str:
    """'bf16', 'fp16' or 'fp32' as the DeepSpeed config asks."""
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class DeepSpeedPlan:
    """What the DeepSpeed engine will do, resolved once from the completed JSON; read these, never the dict.

    ZeRO's fields are DeepSpeed's own resolution (``DeepSpeedZeroConfig``: its defaults where the JSON is
    silent), so a bucket size or an overlap setting here is the one the engine uses.
    """

    config: dict[str, Any]  # the complete JSON handed to deepspeed.initialize
    precision: str  # 'fp32', 'bf16' or 'fp16'
    zero_stage: int
    micro_batch: int  # sequences per micro batch per rank
    gradient_accumulation: int  # micro batches per update per rank
    train_batch: int  # sequences per update, all data-parallel ranks
    clip_norm: float  # 0: no clipping
    reduce_bucket_elements: int  # ZeRO: gradient reduction bucket
    allgather_bucket_elements: int  # ZeRO-1/2: parameter all-gather bucket after the step
    overlap_comm: bool  # ZeRO: gradient reduction overlaps backward
    contiguous_gradients: bool
    offload_optimizer: bool
    offload_param: bool
    zero3_max_live_parameters: int  # ZeRO-3: gathered parameters kept between forward and backward
    pipe_partitioned: bool  # pipeline with TP: each TP rank sends its slice of the activation (and gradient)

    @classmethod
    def resolve(cls, ds: dict[str, Any]) -> DeepSpeedPlan:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        zero = DeepSpeedZeroConfig(**ds.get("zero_optimization", {}))
        offload = (zero.offload_optimizer, zero.offload_param)
        return cls(
            config=ds, precision=precision(ds), zero_stage=int(zero.stage),
            micro_batch=int(ds["train_micro_batch_size_per_gpu"]),
            gradient_accumulation=int(ds["gradient_accumulation_steps"]), train_batch=int(ds["train_batch_size"]),
            clip_norm=float(ds.get("gradient_clipping", 0.0)),
            reduce_bucket_elements=int(zero.reduce_bucket_size),
            allgather_bucket_elements=int(zero.allgather_bucket_size),
            overlap_comm=bool(zero.overlap_comm), contiguous_gradients=bool(zero.contiguous_gradients),
            offload_optimizer=_offloads(offload[0]), offload_param=_offloads(offload[1]),
            zero3_max_live_parameters=int(zero.max_live_parameters),
            pipe_partitioned=bool(ds.get("pipeline", {}).get("pipe_partitioned", True)),
        )  # fmt: skip


def _offloads(offload) -> bool:
    return offload is not None and str(getattr(offload.device, "value", offload.device)) not in ("none", "None")


def build_plan(cfg: TrainConfig, dp_size: int, pp_size: int, user_json: dict | None = None) -> DeepSpeedPlan:
    """:func:`build_ds_config`, resolved."""
    return DeepSpeedPlan.resolve(build_ds_config(cfg, dp_size, pp_size, user_json))
