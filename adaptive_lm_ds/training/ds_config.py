"""Complete the user's DeepSpeed JSON with what our flags decide, and refuse contradictions.

DeepSpeed owns its JSON: ZeRO stage, bf16/fp16 and loss scaling, offload, pipeline options stay
there. Our flags own the batch geometry (fairseq's ``--max-tokens``/``--batch-size`` and
``--update-freq``) and gradient clipping (``--clip-norm``). When the JSON also sets one of those to
a different value we stop with a message naming both, instead of silently preferring one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptive_lm_ds.checkpoint.safe_files import refuse_self_loading_keys
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.memory import ZERO_BUCKET_ELEMENTS
from adaptive_lm_ds.training.config import TrainConfig


class TrainConfigError(UserError, ValueError):
    """A configuration that cannot run; the message says what to change."""


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


def build_ds_config(cfg: TrainConfig, dp_size: int, pp_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this run (user JSON + batch geometry + clipping)."""
    ds = load_ds_json(cfg.run.deepspeed_config)
    micro = micro_batch_sequences(cfg)
    if cfg.data.update_freq < 1:
        raise TrainConfigError(f"--update-freq must be >= 1 (got {cfg.data.update_freq})")
    if "train_batch_size" in ds and "train_micro_batch_size_per_gpu" not in ds:
        raise TrainConfigError(
            "DeepSpeed config sets train_batch_size alone; set the batch with --max-tokens/--batch-size"
        )
    _set(ds, "train_micro_batch_size_per_gpu", micro, "--max-tokens/--batch-size")
    _set(ds, "gradient_accumulation_steps", cfg.data.update_freq, "--update-freq")
    _set(ds, "train_batch_size", micro * cfg.data.update_freq * dp_size, "micro batch x --update-freq x DP size")
    _set(ds, "gradient_clipping", float(cfg.optim.clip_norm), "--clip-norm")
    ds.setdefault("zero_allow_untested_optimizer", True)  # NAG is ours, DeepSpeed does not know it
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage in (1, 2):  # DeepSpeed's 5e8-element default bucket is a 1-2 GB buffer per rank (issue 15)
        ds["zero_optimization"].setdefault("reduce_bucket_size", ZERO_BUCKET_ELEMENTS)
    if pp_size > 1 and stage > 1:
        raise TrainConfigError(
            f"ZeRO stage {stage} does not combine with pipeline parallelism in DeepSpeed; "
            "use ds_configs/pipeline_zero1*.json or --pipeline-model-parallel-size 1"
        )
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise TrainConfigError("DeepSpeed config enables both fp16 and bf16; keep one")
    return ds


def precision(ds: dict[str, Any]) -> str:
    """'bf16', 'fp16' or 'fp32' as the DeepSpeed config asks."""
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"
