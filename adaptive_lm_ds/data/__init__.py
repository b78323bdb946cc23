"""Data: fairseq dictionary, MMIDIDX token files (fairseq and megatron-core layouts), LM blocks, DP batches.

Typical use::

    dataset = build_lm_dataset("data-bin/wikitext-103", "train", tokens_per_sample=512, break_mode="none")
    batches = LMBatchIterator(dataset, batch_size=8, dp_rank=dp_rank, dp_size=dp_size, seed=1)
    for batch in batches:  # {"tokens", "targets"[, "segment_ids"]}: int64 [8, 512]; "ntokens": int
        ...

``FairseqBatchIterator`` (same interface) yields fairseq-train's batches instead; ``build_batch_iterator``
picks one by ``--batch-order``.
"""

from adaptive_lm_ds.data.batch_order import BATCH_ORDERS, build_batch_iterator
from adaptive_lm_ds.data.blocks import BREAK_MODES, LMBlockDataset, block_bounds, build_lm_dataset
from adaptive_lm_ds.data.dictionary import Dictionary
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.fairseq_order import FairseqBatchIterator
from adaptive_lm_ds.data.indexed import IndexedTokens, TokenFileWriter, best_fitting_dtype
from adaptive_lm_ds.data.sampler import LMBatchIterator, collate

__all__ = [
    "BATCH_ORDERS",
    "BREAK_MODES",
    "DataError",
    "Dictionary",
    "FairseqBatchIterator",
    "IndexedTokens",
    "LMBatchIterator",
    "LMBlockDataset",
    "TokenFileWriter",
    "best_fitting_dtype",
    "block_bounds",
    "build_batch_iterator",
    "build_lm_dataset",
    "collate",
]
