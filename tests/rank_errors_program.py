"""A program for tests/test_rank_errors.py, started on each rank by a launcher: ``adaptive-lm-model-summary``'s
``main`` replaced by a user error raised on some ranks, behind the real boundary (``cli.run``).

``python rank_errors_program.py rank1-alone``: rank 1 alone raises (rank 0 finishes); ``agreed``: every rank
raises the error that rank 0 decided (``checkpoint.agreement.decided_on_rank0``, over a gloo group).
"""

import os
import sys

import torch.distributed as dist

from adaptive_lm_ds import cli

SHARD_ERROR = "shard 1 of the data is unreadable; check its permissions"
DECIDED_ERROR = "no checkpoint to resume in the save dir; pass --restore-file"


def rank1_alone(argv: list[str]) -> None:
    from adaptive_lm_ds.data.errors import DataError

    if os.environ["RANK"] == "1":
        raise DataError(SHARD_ERROR)


def agreed(argv: list[str]) -> None:
    from adaptive_lm_ds.checkpoint.agreement import decided_on_rank0
    from adaptive_lm_ds.checkpoint.errors import CheckpointError

    def decide() -> None:
        raise CheckpointError(DECIDED_ERROR)

    dist.init_process_group("gloo")
    try:
        decided_on_rank0(decide)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mode = next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))
    cli.start_up()
    from adaptive_lm_ds.commands import model_summary

    model_summary.main = {"rank1-alone": rank1_alone, "agreed": agreed}[mode]
    sys.exit(cli.run("adaptive-lm-model-summary", []))
