"""Replay fairseq's own training batches into this project's Trainer (a test utility, never the product).

The product keeps its own sampler; a parity test needs both trainers to see the *same* micro batches,
so ``tests/oracle_scripts/record_fairseq_train.py`` records what ``fairseq-train`` fed each update and
:func:`train_on_recorded_batches` (rank-side, for ``run_on_ranks``) swaps the Trainer's batch iterator
for those batches: with ``dp`` data-parallel ranks and ``--update-freq g`` each update's ``dp * g``
recorded micro batches go to the ranks in order (rank ``r`` takes ``[r*g, (r+1)*g)``), so the update
sums exactly fairseq's samples.
"""

from __future__ import annotations

import torch


class RecordedBatches:
    """Stands in for ``LMBatchIterator``: this rank's recorded micro batches, in order."""

    epoch = 0

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        for b in self.batches:
            yield {"tokens": b["tokens"], "targets": b["targets"], "ntokens": int(b["ntokens"])}

    def __len__(self) -> int:
        return len(self.batches)

    def state_dict(self) -> dict:
        return {}


def train_on_recorded_batches(argv: list[str], record: str) -> list[dict]:
    """Rank-side: train with launcher flags ``argv`` on the recorded batches; per update lr, loss, gnorm."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.trainer import Trainer

    trainer = Trainer(config_from_args(build_parser("replay").parse_args(argv)))
    updates = torch.load(record, weights_only=True)["updates"]
    dp, rank, gas = trainer.dims.dp, trainer.dims.dp_rank, trainer.cfg.data.update_freq
    mine = []
    for update in updates:
        if len(update["samples"]) != dp * gas:
            raise ValueError(f"an update of {len(update['samples'])} micro batches cannot split into {dp} x {gas}")
        mine += update["samples"][rank * gas : (rank + 1) * gas]
    trainer.batches = RecordedBatches(mine)
    log = log_updates(trainer)
    trainer.run()
    parallel.destroy_parallel()
    return log


def log_updates(trainer) -> list[dict]:
    """A list that each update of ``trainer`` appends its lr (the one it runs with), loss_sum, ntokens and
    gnorm to, as fairseq's recorder (tests/oracle_scripts/record_fairseq_train.py) records them."""
    log = []
    step = trainer.stepper.train_step

    def logged_step(batches):
        lr = trainer.scheduler.optimizer.param_groups[0]["lr"]  # the lr this update runs with
        result = step(batches)
        loss_sum, ntokens, gnorm = result.read()
        log.append({"lr": lr, "loss_sum": loss_sum, "ntokens": ntokens, "gnorm": gnorm})
        return result

    trainer.stepper.train_step = logged_step
    return log
