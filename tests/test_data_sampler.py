"""LMBatchIterator: DP sharding of one global order, seeded epochs, exact resume, fixed-shape padding."""

import itertools

import numpy as np
import pytest
import torch

from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.sampler import LMBatchIterator, collate


class Blocks:
    """Dataset stub: sample i has i % 5 + 1 targets, all equal to 10 + i (so rows name their sample)."""

    tokens_per_sample = 6

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        size = i % 5 + 1
        return {"tokens": np.full(size, 10 + i), "targets": np.full(size, 10 + i)}


def sample_ids(batch) -> list[int]:
    return [int(row[0]) - 10 for row in batch["targets"] if row[0] != 1]


def test_dp_ranks_split_the_single_rank_global_batches():
    data = Blocks(103)
    single = [sample_ids(b) for b in LMBatchIterator(data, batch_size=8, seed=3)]
    ranks = [[sample_ids(b) for b in LMBatchIterator(data, 4, dp_rank=r, dp_size=2, seed=3)] for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single
    assert len(single) == 103 // 8


def test_each_epoch_is_a_permutation_and_epochs_differ():
    it = LMBatchIterator(Blocks(40), batch_size=8, seed=1)
    epoch0 = [i for b in it for i in sample_ids(b)]
    epoch1 = [i for b in it for i in sample_ids(b)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(40)) and epoch0 != epoch1
    assert it.epoch == 2


def test_same_seed_same_order_other_seed_other_order():
    order = lambda seed: [i for b in LMBatchIterator(Blocks(40), 8, seed=seed) for i in sample_ids(b)]
    assert order(5) == order(5) and order(5) != order(6)


def test_no_shuffle_keeps_dataset_order():
    assert [i for b in LMBatchIterator(Blocks(16), 4, shuffle=False) for i in sample_ids(b)] == list(range(16))


def test_resume_from_state_dict_is_exact():
    data = Blocks(50)
    reference = LMBatchIterator(data, 4, dp_rank=1, dp_size=2, seed=7)
    expected = [b["tokens"] for _ in range(2) for b in reference]  # two epochs
    first = LMBatchIterator(data, 4, dp_rank=1, dp_size=2, seed=7)
    got = [b["tokens"] for b in itertools.islice(first, 3)]
    resumed = LMBatchIterator(data, 4, dp_rank=1, dp_size=2, seed=7)
    resumed.load_state_dict(first.state_dict())
    got += [b["tokens"] for _ in range(2) for b in resumed][: len(expected) - 3]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_resume_at_another_global_batch_continues_after_the_same_samples():
    """Saved at global batch 4 (DP1) after 3 batches = 12 samples; resumed at global batch 6 (DP2 x 3): the next
    batches start at sample 12 of the same epoch order."""
    saved = LMBatchIterator(Blocks(50), 4, seed=7)
    list(itertools.islice(saved, 3))
    order = saved.epoch_order(0)
    resumed = [LMBatchIterator(Blocks(50), 3, dp_rank=r, dp_size=2, seed=7) for r in range(2)]
    for it in resumed:
        it.load_state_dict(saved.state_dict())
    rows = [i for it in resumed for i in sample_ids(next(iter(it)))]
    assert rows == [int(i) for i in order[12:18]]


def test_resume_rounds_down_to_a_whole_update():
    """14 samples consumed, updates of 4 samples now: continue after 12 (never inside an update)."""
    it = LMBatchIterator(Blocks(50), 2, seed=7)
    it.seek({"epoch": 0, "samples": 14}, update_samples=4)
    assert (it.epoch, it.position) == (0, 6)


def test_resume_refuses_another_seed():
    state = LMBatchIterator(Blocks(50), 4, dp_size=2, seed=1).state_dict()
    with pytest.raises(DataError, match="seed=1 but now 2"):
        LMBatchIterator(Blocks(50), 4, dp_size=3, seed=2).load_state_dict(state)


def test_without_drop_last_every_sample_is_seen_once_and_rows_pad():
    data = Blocks(11)
    seen, ntok = [], 0
    for r in range(2):
        for b in LMBatchIterator(data, 4, dp_rank=r, dp_size=2, drop_last=False):
            seen += sample_ids(b)
            ntok += b["ntokens"]
            assert b["tokens"].shape == (4, 6)
    assert sorted(seen) == list(range(11)) and ntok == sum(i % 5 + 1 for i in range(11))


def test_collate_pads_with_pad_and_continues_segments():
    samples = [
        {"tokens": np.array([2, 5, 6]), "targets": np.array([5, 6, 2]), "segment_ids": np.array([0, 0, 1])},
    ]
    batch = collate(samples, batch_size=2, length=5)
    assert batch["tokens"].dtype == torch.int64 and batch["ntokens"] == 3
    assert batch["targets"].tolist() == [[5, 6, 2, 1, 1], [1] * 5]
    assert batch["segment_ids"][0].tolist() == [0, 0, 1, 2, 2]


def test_bad_rank_is_refused():
    with pytest.raises(DataError, match="dp_rank < dp_size"):
        LMBatchIterator(Blocks(4), 2, dp_rank=2, dp_size=2)


def test_resume_refuses_a_position_in_fairseqs_batch_order():
    from adaptive_lm_ds.data.fairseq_order import FairseqBatchIterator

    blocks = Blocks(50)
    blocks.sizes = np.array([len(blocks[i]["targets"]) for i in range(len(blocks))])
    state = FairseqBatchIterator(blocks, 4, max_sentences=4, required_batch_size_multiple=1).state_dict()
    with pytest.raises(DataError, match="--batch-order fairseq, not ours"):
        LMBatchIterator(blocks, 4).load_state_dict(state)
