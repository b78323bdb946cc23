"""Write a consolidated model as a DeepSpeed checkpoint of a given TP x PP layout (the inverse of export).

    torchrun --nproc_per_node TP*PP -m adaptive_lm_ds adaptive-lm-write-layout \\
        --consolidated DIR --save-dir OUT --tensor-model-parallel-size TP --pipeline-model-parallel-size PP

``adaptive-lm-convert`` starts these ranks when given a layout
(launch.py). The result is ``OUT/checkpoint_0``
with ``latest`` pointing at it, exactly what a training run saves: rerunning training with
``--save-dir OUT`` resumes from it in any layout (its optimizer state is fresh, so the trainer starts the
optimizer anew and keeps the weights; another layout reads them through the state adapter).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.checkpoint import CheckpointRecord, SaveDirLock, save_checkpoint
from adaptive_lm_ds.checkpoint.agreement import decided_on_rank0
from adaptive_lm_ds.formats.consolidated import load_consolidated
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.optim.config import OptimConfig
from adaptive_lm_ds.training.ds_config import DeepSpeedPlan, complete_ds_config
from adaptive_lm_ds.training.engine import build_module
from adaptive_lm_ds.training.engine_build import build_engine

LAYOUT_DS_JSON = {"zero_optimization": {"stage": 1}}  # fp32 weights, as ds_configs/zero1.json


def write_layout_checkpoint(consolidated: str, save_dir: str, tp: int, pp: int, seed: int = 1) -> str:
    """Rank-side (process group initialised, world = tp * pp): save ``checkpoint_0`` for this layout."""
    cfg, state, dictionary = load_consolidated(consolidated)
    cfg.validate(tp)
    dims = parallel.initialize_parallel(parallel.ParallelDims.for_world(dist.get_world_size(), tp, pp), seed)
    try:
        module = build_module(cfg, checkpoint_activations=False, seed=seed)
        load_weights(module, state)
        plan = DeepSpeedPlan.resolve(
            complete_ds_config(LAYOUT_DS_JSON, micro=1, gas=1, dp_size=dims.dp, pp_size=dims.pp, clip_norm=0.0)
        )
        # a placeholder optimizer: the trainer starts the optimizer anew from this checkpoint
        engine = build_engine(module, OptimConfig(lr=1.0), plan, packed=False).engine
        record = CheckpointRecord.build(
            cfg, dims, num_updates=0, data=None, precision=plan.precision, zero_stage=plan.zero_stage,
            optimizer_fresh=True, converted_from=str(consolidated),
        )  # fmt: skip
        locks = []  # rank 0's hold on the save dir (one writer per save dir); a refusal reaches every rank
        decided_on_rank0(lambda: locks.append(SaveDirLock(save_dir).acquire()))
        lock = locks[0] if locks else None
        try:
            still_owner = lock.check_owned if lock is not None else None
            return save_checkpoint(engine, save_dir, record, dictionary=dictionary, still_owner=still_owner)
        finally:
            if lock is not None:
                lock.release()
    finally:
        parallel.destroy_parallel()


def main(argv: list[str] | None = None) -> int:
    p = cli.rank_parser(description=__doc__)
    p.add_argument("--consolidated", required=True)
    p.add_argument("--save-dir", required=True)
    cli.add_layout_arguments(p, description="the layout of the checkpoint to write (one rank each)")
    args = p.parse_args(argv)
    parallel.init_process_group()
    tag = write_layout_checkpoint(
        args.consolidated, args.save_dir, args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    )
    if dist.get_rank() == 0:
        print(f"wrote DeepSpeed checkpoint {Path(args.save_dir) / tag} for TP{args.tensor_model_parallel_size} x "
              f"PP{args.pipeline_model_parallel_size}")  # fmt: skip
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
