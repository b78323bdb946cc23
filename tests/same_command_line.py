"""Our side of a fairseq-train command line, for the oracle tests (test utilities, never the product).

With ``--batch-order fairseq`` our data loader yields fairseq-train's micro batches for the same command
line (data/fairseq_order.py), so a test gives both programs one command line and compares what they
fed or logged.
"""

from __future__ import annotations

from adaptive_lm_ds.data import FairseqBatchIterator, build_batch_iterator, build_lm_dataset
from adaptive_lm_ds.training.config import TrainConfig, build_parser, config_from_args
from adaptive_lm_ds.training.ds_config import micro_batch_sequences


def parse(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser("same command line").parse_args([*argv, "--batch-order", "fairseq"]))


def batch_iterator(argv: list[str], dp_rank: int = 0, dp_size: int = 1) -> FairseqBatchIterator:
    """The training batches our trainer's rank ``dp_rank`` of ``dp_size`` gets for launcher flags ``argv``."""
    cfg = parse(argv)
    data = cfg.data
    dataset = build_lm_dataset(data.data, data.train_subset, data.tokens_per_sample, data.sample_break_mode)
    return build_batch_iterator(data, dataset, micro_batch_sequences(cfg), dp_rank, dp_size, cfg.run.seed)


def train_logging_updates(argv: list[str]) -> list[dict]:
    """Rank-side (for ``run_on_ranks``): train with launcher flags ``argv``; per update lr, loss_sum, ntokens,
    gnorm (global over the ranks), the lr being the one the update ran with."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.training.trainer import Trainer

    trainer = Trainer(parse(argv))
    log = []
    step = trainer.stepper.train_step

    def logged_step(batches):
        lr = trainer.scheduler.optimizer.param_groups[0]["lr"]  # the lr this update runs with
        result = step(batches)
        loss_sum, ntokens, gnorm = result.read()
        log.append({"lr": lr, "loss_sum": loss_sum, "ntokens": ntokens, "gnorm": gnorm})
        return result

    trainer.stepper.train_step = logged_step
    trainer.run()
    parallel.destroy_parallel()
    return log
