"""The one training entry behind ``launchers/train_*.py``: parse, start the process group, train.

Errors that a user can fix (:class:`~adaptive_lm_ds.errors.UserError`: layout, batch, config, data,
checkpoint, an aborted run) end the run with a one-line ``error: ...`` on rank 0 and exit code 2.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from adaptive_lm_ds import ds_runtime, parallel
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.training.config import build_parser, config_from_args
from adaptive_lm_ds.training.trainer import Trainer


def init_process_group() -> None:
    """``parallel.init_process_group``, the accelerator's backend; a plain launcher run is a world of one.

    DeepSpeed's shared-memory op is loaded from this venv first (a stale build lock is an error, not a
    hang), and each rank's ``/dev/shm`` buffer name is unlinked once all ranks have mapped it.
    """
    ds_runtime.load_shm_op()
    parallel.init_process_group(world_of_one=True)
    ds_runtime.release_shm_buffer()


def main(argv=None, description: str = "Train an adaptive-input LM", defaults: dict | None = None) -> int:
    args = build_parser(description, defaults).parse_args(argv)
    cfg = config_from_args(args)
    if not cfg.data.data:
        print("error: --data DATA_BIN is required (the folder tools/preprocess_data.py wrote)", file=sys.stderr)
        return 2
    try:
        init_process_group()
    except ds_runtime.StaleBuildLock as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        summary = Trainer(cfg).run()
    except UserError as e:
        if dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the update loop installed its handler: nothing to save yet
        print("error: interrupted during set-up; nothing was saved", file=sys.stderr, flush=True)
        return 130
    if summary.get("stopped_by") is not None:  # preempted: saved, every rank stopped at the same update
        if dist.get_rank() == 0:
            print(summary["message"], flush=True)
        dist.destroy_process_group()
        return summary["exit_code"]
    if dist.get_rank() == 0:
        print(
            f"| done: {summary['num_updates']} updates, valid loss {summary['valid_loss_base2']:.4f} (base 2), "
            f"valid ppl {summary['valid_ppl']:.2f}",
            flush=True,
        )
    dist.barrier()
    dist.destroy_process_group()
    return 0
