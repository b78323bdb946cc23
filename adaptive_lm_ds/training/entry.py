"""The one training entry behind ``adaptive-lm-train*`` and ``launchers/train_*.py``: parse, start, train.

Errors that a user can fix (:class:`~adaptive_lm_ds.errors.UserError`: layout, batch, config, data,
checkpoint, an aborted run) end the run with a one-line ``error: ...`` on rank 0 and exit code 2.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from adaptive_lm_ds import ds_runtime, parallel
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.launch import PortInUseError
from adaptive_lm_ds.training.config import config_from_args, parse_args
from adaptive_lm_ds.training.trainer import Trainer


def main(argv=None, recipe: str | None = None) -> int:
    """``adaptive-lm-train`` (``recipe``: the named programs, e.g. ``adaptive-lm-train-gbw``; training/recipes.py)."""
    args = parse_args(argv, recipe)
    cfg = config_from_args(args)
    if not cfg.data.data:
        print("error: --data DATA_BIN is required (the folder tools/preprocess_data.py wrote)", file=sys.stderr)
        return 2
    try:
        parallel.init_process_group(world_of_one=True)  # a plain launcher run is a world of one
    except (ds_runtime.StaleBuildLock, PortInUseError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        return _train(cfg)
    finally:
        parallel.shutdown()  # every path: a live gloo group at interpreter exit can abort the process


def _train(cfg) -> int:
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
        return summary["exit_code"]
    if dist.get_rank() == 0:
        print(
            f"| done: {summary['num_updates']} updates, valid loss {summary['valid_loss_base2']:.4f} (base 2), "
            f"valid ppl {summary['valid_ppl']:.2f}",
            flush=True,
        )
    dist.barrier()
    return 0
