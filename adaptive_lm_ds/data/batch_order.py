"""Which order the training batches come in (``--batch-order``): ours, or fairseq-train's.

``ours`` (:class:`~adaptive_lm_ds.data.sampler.LMBatchIterator`) is a seeded permutation of samples cut
into full ``[micro, tokens_per_sample]`` batches; ``fairseq``
(:class:`~adaptive_lm_ds.data.fairseq_order.FairseqBatchIterator`) reproduces fairseq-train's batches
for the same command line, so a fairseq run can be taken over, or compared with, on the same data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.fairseq_order import FAIRSEQ_BREAK_MODES, FairseqBatchIterator
from adaptive_lm_ds.data.sampler import LMBatchIterator

if TYPE_CHECKING:
    from adaptive_lm_ds.training.config import DataConfig

BATCH_ORDERS = ("ours", "fairseq")


def build_batch_iterator(
    data: DataConfig, dataset, micro: int, dp_rank: int, dp_size: int, seed: int
) -> LMBatchIterator | FairseqBatchIterator:
    """The training batches of this DP rank in the order ``data.batch_order`` names; refuses, in one line, a
    setting under which that order cannot be produced."""
    multiple = data.required_batch_size_multiple
    if data.batch_order == "ours":
        if multiple is not None:
            raise DataError(
                "--required-batch-size-multiple shapes fairseq's batches only: add --batch-order fairseq, "
                "or drop the flag (micro batches here are exactly --max-tokens / --batch-size)"
            )
        return LMBatchIterator(dataset, micro, dp_rank, dp_size, seed=seed)
    if data.batch_order != "fairseq":
        raise DataError(f"unknown --batch-order {data.batch_order!r}; choose one of {BATCH_ORDERS}")
    if data.sample_break_mode not in FAIRSEQ_BREAK_MODES:
        raise DataError(
            f"--batch-order fairseq needs a break mode fairseq has ({', '.join(FAIRSEQ_BREAK_MODES)}); "
            f"--sample-break-mode {data.sample_break_mode} is this project's own"
        )
    return FairseqBatchIterator(
        dataset, micro, dp_rank, dp_size, seed,
        max_tokens=data.max_tokens, max_sentences=data.batch_size, update_freq=data.update_freq,
        required_batch_size_multiple=multiple,
    )  # fmt: skip
