"""Per-rank memory plan of a preset under a training layout, and the smallest layouts that fit N GPUs.

    adaptive-lm-memory-plan --preset gbw_huge --tensor-model-parallel-size 1 --data-parallel-size 8 \
        --zero-stage 1 --precision bf16
    adaptive-lm-memory-plan --preset gbw_huge --search 1,8,16,32 --memory-gb 80 [--json FILE]
    adaptive-lm-memory-plan --preset gbw_huge --device cpu --tensor-model-parallel-size 2 \
        --micro-batch 2 --seq-len 128 --zero-stage 1 --packed      # a CPU rank's peak RSS

The model is the planner's (adaptive_lm_ds/memory.py: ZeRO accounting over parameter counts from the
real modules on the meta device, activations from what this code saves for backward, DeepSpeed's
transient buffers, and on CPU the measured runtime baseline). "Fits" means the plan's total stays under
``--reserve`` of ``--memory-gb`` (default: 90% of 80 GB on a GPU; 100% of this machine's RAM on CPU,
whose plan already counts the runtime); on a GPU the rest is left for the CUDA context and the
allocator's fragmentation, which the plan does not model. Each row says whether it fits. The search
tries every TP (dividing the heads) x PP x DP of N GPUs, ZeRO 0-3 (0-1 with PP), activation
checkpointing off/on and CPU offload off/on, and prints the cheapest that fits: no offload first, then
the least model parallelism (TP x PP), no checkpointing, the lowest ZeRO stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from adaptive_lm_ds import cli
from adaptive_lm_ds.config import PRESETS, ModelConfig, get_preset
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.memory import (
    OPTIMIZER_STATES,
    PRECISION_BYTES,
    MemoryPlan,
    TrainLayout,
    plan_memory,
)
from adaptive_lm_ds.parallel import ParallelDims

GB = 1e9


def candidate_layouts(cfg: ModelConfig, gpus: int, base: TrainLayout) -> list[TrainLayout]:
    layouts = []
    for tp in (t for t in (1, 2, 4, 8) if gpus % t == 0 and cfg.num_heads % t == 0 and cfg.ffn_dim % t == 0):
        for pp in (p for p in range(1, gpus // tp + 1) if (gpus // tp) % p == 0 and p <= cfg.num_layers):
            for zero in (0, 1) if pp > 1 else (0, 1, 2, 3):
                for ckpt in (False, True):
                    for offload in (False, True) if zero else (False,):
                        layouts.append(
                            dataclasses.replace(
                                base,
                                dims=ParallelDims(tp, pp, gpus // (tp * pp)),
                                zero_stage=zero,
                                activation_checkpointing=ckpt,
                                cpu_offload=offload,
                            )
                        )
    return layouts


def layout_cost(layout: TrainLayout) -> tuple:
    return (layout.cpu_offload, layout.tp * layout.pp, layout.activation_checkpointing, layout.zero_stage, layout.tp)


def smallest_fit(
    cfg: ModelConfig, gpus: int, base: TrainLayout, budget: float
) -> tuple[TrainLayout, MemoryPlan] | None:
    for layout in sorted(candidate_layouts(cfg, gpus, base), key=layout_cost):
        plan = plan_memory(cfg, layout)
        if plan.total <= budget:
            return layout, plan
    return None


def describe(layout: TrainLayout) -> str:
    extras = [name for name, on in (("ckpt", layout.activation_checkpointing), ("offload", layout.cpu_offload)) if on]
    return f"TP{layout.tp} PP{layout.pp} DP{layout.dp} ZeRO-{layout.zero_stage}" + (
        " " + "+".join(extras) if extras else ""
    )


def plan_row(layout: TrainLayout, plan: MemoryPlan) -> dict:
    return {
        "layout": layout.as_dict(),
        "stage": plan.stage,
        **{k: getattr(plan, k) for k in COLUMNS},
    }


COLUMNS = ("runtime", "params", "grads", "optimizer", "activations", "transient", "total", "cpu")
HEADER = f"{'layout (GB per rank)':<46}" + "".join(f"{h[:8]:>9}" for h in COLUMNS) + "  fits"


def format_row(label: str, plan: MemoryPlan, budget: float) -> str:
    fits = "yes" if plan.total <= budget else "NO"
    return f"{label:<46}" + "".join(f"{getattr(plan, k) / GB:>9.2f}" for k in COLUMNS) + f"  {fits}"


def machine_memory_bytes() -> int:
    """This machine's RAM (``sysconf``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def add_model_and_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every planner takes: the model preset and the layout's sizes, as in training."""
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=None)
    layout = cli.add_layout_arguments(parser)
    layout.add_argument("--data-parallel-size", type=int, default=1, help="world size / (TP x PP) in training")


def gpu_counts(text: str) -> list[int]:
    """``--search 1,8,16`` -> ``[1, 8, 16]`` (argparse reports a malformed list as a bad value)."""
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of GPU counts") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.parser(description=__doc__.splitlines()[0])
    add_model_and_layout_arguments(parser)
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per micro batch")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--precision", choices=sorted(PRECISION_BYTES), default="bf16")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZER_STATES), default="nag")
    parser.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="recompute each transformer block in backward, as in training",
    )
    parser.add_argument("--cpu-offload", action="store_true")
    parser.add_argument("--packed", action="store_true", help="block-diagonal attention over packed sentences")
    parser.add_argument(
        "--search", type=gpu_counts, default=[], help="comma-separated GPU counts: print the smallest fitting layouts"
    )
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="cpu: plan a rank's peak RSS")
    parser.add_argument(
        "--memory-gb", "--gpu-memory-gb", type=float, default=None,
        help="memory per device (default: 80 on gpu; this machine's RAM on cpu, shared by all ranks)",
    )  # fmt: skip
    parser.add_argument("--reserve", type=float, default=None, help="usable fraction (default 0.9 gpu, 1.0 cpu)")
    parser.add_argument("--json", default=None, help="write the plans here as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpu = args.device == "cpu"
    reserve = args.reserve if args.reserve is not None else (1.0 if cpu else 0.9)
    memory = args.memory_gb * GB if args.memory_gb is not None else (machine_memory_bytes() if cpu else 80 * GB)
    layout = TrainLayout(
        dims=ParallelDims(args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size),
        zero_stage=args.zero_stage,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len,
        precision=args.precision,
        optimizer=args.optimizer,
        activation_checkpointing=args.checkpoint_activations,
        cpu_offload=args.cpu_offload,
        packed=args.packed,
        device=args.device,
    )
    # On CPU every rank of the layout shares the machine: the budget per rank is the machine's share.
    ranks_here = layout.world_size if cpu and args.memory_gb is None else 1
    budget = memory * reserve / ranks_here
    cfg = get_preset(args.preset, args.vocab_size)
    plan = plan_memory(cfg, layout)
    tokens = args.micro_batch * args.seq_len
    print(f"{args.preset}: {args.precision}, {args.optimizer}, micro batch {args.micro_batch} x {args.seq_len} tokens")
    share = f" / {ranks_here} ranks on this machine" if ranks_here > 1 else ""
    print(f"fits = total <= {reserve:.0%} of {memory / GB:.1f} GB{share} = {budget / GB:.2f} GB per rank\n")
    print(HEADER)
    printed = {layout}  # a layout's row is printed once, whatever else it is (plain, smallest fit)

    def row(label: str, row_layout: TrainLayout, row_plan: MemoryPlan) -> None:
        if row_layout not in printed:
            printed.add(row_layout)
            print(format_row(label, row_plan, budget))

    print(format_row(describe(layout), plan, budget))
    result = {"preset": args.preset, "tokens_per_micro_batch": tokens, "budget_bytes": budget}
    result["plan"] = plan_row(layout, plan)
    result["search"] = {}
    for gpus in args.search:
        plain = dataclasses.replace(layout, dims=ParallelDims(dp=gpus), zero_stage=0, cpu_offload=False)
        row(f"{gpus} GPU(s): {describe(plain)}", plain, plan_memory(cfg, plain))
        found = smallest_fit(cfg, gpus, layout, budget)
        if found is None:
            print(f"{gpus} GPU(s): no layout fits")
            result["search"][gpus] = None
            continue
        if found[0] in printed:
            print(f"{gpus} GPU(s) smallest fit: {describe(found[0])} (row above)")
        row(f"{gpus} GPU(s) smallest fit: {describe(found[0])}", *found)
        result["search"][gpus] = plan_row(*found)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
