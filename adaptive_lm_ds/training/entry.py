"""The one training entry behind ``adaptive-lm-train*`` and ``launchers/train_*.py``: parse, start, train.

Errors that a user can fix (:class:`~adaptive_lm_ds.errors.UserError`: layout, batch, config, data,
checkpoint, an aborted run) propagate to :func:`adaptive_lm_ds.cli.run` (one line on rank 0, exit code 2)
after the ``finally`` below shut the process group down on every rank.
"""

from __future__ import annotations

import logging

import torch.distributed as dist

from adaptive_lm_ds import parallel
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.training.config import config_from_args, parse_args
from adaptive_lm_ds.training.trainer import Trainer

LOG = logging.getLogger("adaptive_lm_ds.train")


def main(argv=None, recipe: str | None = None) -> int:
    """``adaptive-lm-train`` (``recipe``: the named programs, e.g. ``adaptive-lm-train-gbw``; training/recipes.py)."""
    args = parse_args(argv, recipe)
    cfg = config_from_args(args)
    if not cfg.data.data:
        raise UserError("--data DATA_BIN is required (the folder adaptive-lm-preprocess wrote)")
    parallel.init_process_group(world_of_one=True)  # a plain launcher run is a world of one
    try:
        return _train(cfg)
    finally:
        parallel.shutdown()  # every path: a live gloo group at interpreter exit can abort the process


def _train(cfg) -> int:
    summary = Trainer(cfg).run()  # Ctrl-C before the update loop's handler: cli.run's one line, exit code 130
    if summary.get("stopped_by") is not None:  # preempted: saved, every rank stopped at the same update
        if dist.get_rank() == 0:
            LOG.info(summary["message"])
        return summary["exit_code"]
    if dist.get_rank() == 0:
        LOG.info(
            f"done: {summary['num_updates']} updates, valid loss {summary['valid_loss_base2']:.4f} (base 2), "
            f"valid ppl {summary['valid_ppl']:.2f}"
        )
    dist.barrier()
    return 0
