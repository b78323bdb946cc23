"""Seeded initialisation: a table's TP shards are exactly the rows of the single-process table.

Reference: the whole table drawn by ``fill_rows`` at TP = 1 (one shard of all rows). Block size 3
against shards of 4 rows puts block boundaries inside shards and shards inside blocks.
"""

import torch

from adaptive_lm_ds.layers import seeded_init
from adaptive_lm_ds.layers.vocab_parallel import VocabShard

ROWS, DIM, BLOCK = 10, 5, 3


def _shard(tp: int, rank: int, key: str = "bands.0.table") -> torch.Tensor:
    shard = VocabShard(ROWS, tp, rank)
    weight = torch.full((shard.rows_per_rank, DIM), float("nan"))
    seeded_init.fill_rows(weight, shard.start, shard.real_rows, key, seeded_init.normal_rows(1.0, DIM), BLOCK)
    return weight


def test_shards_are_slices_of_the_single_process_table():
    full = _shard(1, 0)
    assert torch.isfinite(full).all() and full.std() > 0.5
    for tp in (2, 3, 4):
        shards = [_shard(tp, r) for r in range(tp)]
        rows_per_rank = shards[0].shape[0]
        torch.testing.assert_close(torch.cat(shards)[:ROWS], full, rtol=0, atol=0)
        assert (torch.cat(shards)[ROWS:] == 0).all()  # padding rows zero
        assert rows_per_rank * tp >= ROWS


def test_streams_depend_on_key_and_seed_only():
    assert torch.equal(_shard(1, 0), _shard(1, 0))
    assert not torch.equal(_shard(1, 0), _shard(1, 0, key="output.tables.0"))
    before = _shard(1, 0)
    torch.manual_seed(torch.initial_seed() + 1)  # outside a parallel context the seed is the default one's
    assert not torch.equal(before, _shard(1, 0))
