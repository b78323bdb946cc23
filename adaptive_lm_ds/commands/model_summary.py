"""Parameters of a preset per component and per rank of a TP x PP layout, counted on the meta device.

    adaptive-lm-model-summary --preset gbw_huge --tensor-model-parallel-size 4 \
        --pipeline-model-parallel-size 2 --json

The model is built on ``torch.device("meta")`` (no memory, gbw_huge included) from the real modules:
once at TP = 1 for the totals and once as TP rank 0 of the layout (a shape-only TP group; every TP rank
has the same shapes because bands are padded to a multiple of TP). Tied tensors count once in the
totals; with PP > 1 the last stage holds its own copy of the tied tensors, which its rank count includes.
``per_rank_params[g]`` is model-parallel rank ``g = stage * tp + tp_rank`` (tensor-parallel fastest).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter

import torch

from adaptive_lm_ds import (
    cli,
    parallel,
)
from adaptive_lm_ds.config import PRESETS, ModelConfig, get_preset
from adaptive_lm_ds.memory import stage_parameter_counts
from adaptive_lm_ds.model import AdaptiveLM


def component_of(name: str) -> str:
    """Which part of the model a parameter name belongs to."""
    if name.startswith("embed.tokens.") or name.startswith("output.bands."):
        return "input band projections" if ".proj." in name else "input band tables"
    if name.startswith("embed.positions"):
        return "positions"
    if name.startswith("layers."):
        return "transformer blocks"
    if name.startswith("final_norm"):
        return "final norm"
    if name.startswith("output.cluster_proj") or name.startswith("output.tables.0."):
        return "softmax head (own)"
    return "softmax tails (own)"


def build_on_meta(cfg: ModelConfig, tp: int) -> AdaptiveLM:
    with torch.device("meta"):
        return AdaptiveLM(cfg, tp_group=parallel.ShapeOnlyGroup(tp))


def summarize(cfg: ModelConfig, tp: int, pp: int) -> dict:
    full = build_on_meta(cfg, 1)
    components = Counter()
    for name, param in full.named_parameters():  # a tied tensor appears once, under the input's name
        components[component_of(name)] += param.numel()
    stages = list(stage_parameter_counts(cfg, tp, pp))
    return {
        "vocab_size": cfg.vocab_size,
        "layout": {"tp": tp, "pp": pp},
        "total_params": sum(components.values()),
        "components": dict(components),
        "per_stage_params": stages,
        "per_rank_params": [count for count in stages for _ in range(tp)],
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
    }


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 to stderr for the block, so --json output stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=None)
    cli.add_layout_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    cfg = get_preset(args.preset, args.vocab_size).validate(tp)
    with _stdout_to_stderr(), parallel.single_process():  # DeepSpeed prints while it starts
        summary = summarize(cfg, tp, pp)
    summary = {"preset": args.preset, **summary}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.preset}: vocab {cfg.vocab_size}, d {cfg.embed_dim}, {cfg.num_layers} layers")
    for name, count in summary["components"].items():
        print(f"  {name:<26} {count:>15,}")
    print(f"  {'total (tied once)':<26} {summary['total_params']:>15,}")
    for stage, count in enumerate(summary["per_stage_params"]):
        print(f"  stage {stage}, each of {tp} TP ranks: {count:,}")
    return 0
