"""Token blocks: fairseq's break modes, the source/target shift, packed segments; eval-lm's counts."""

import numpy as np
import pytest
import torch

from adaptive_lm_ds.data.blocks import LMBlockDataset, build_lm_dataset
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.indexed import IndexedTokens, TokenFileWriter
from adaptive_lm_ds.data.sampler import LMBatchIterator

SIZES = [5, 1, 9, 3, 3, 12, 2, 4, 4, 1]


def fairseq_complete_slices(sizes, block_size):
    """fairseq's _get_slice_indices_fast, break_mode == 'complete' (reference, a plain loop)."""
    out, tok, i, cur = [], 0, 0, 0
    while i < len(sizes):
        if cur + sizes[i] <= block_size or cur == 0:
            cur += sizes[i]
            i += 1
        else:
            out.append((tok, tok + cur))
            tok, cur = tok + cur, 0
    if cur > 0:
        out.append((tok, tok + cur))
    return out


@pytest.fixture
def stream(tmp_path):
    """Sentences of SIZES tokens, each ending in </s>=2; other ids count up from 4."""
    rng = np.random.default_rng(0)
    sents = [np.append(rng.integers(4, 50, size=n - 1), 2) for n in SIZES]
    with TokenFileWriter(tmp_path / "t", np.uint16) as w:
        w.add_chunk(np.concatenate(sents), np.array(SIZES))
    return IndexedTokens(tmp_path / "t"), np.concatenate(sents)


@pytest.mark.parametrize("block", [2, 4, 7, 12, 100])
def test_complete_matches_fairseq_greedy_loop(stream, block):
    ds = LMBlockDataset(stream[0], block, "complete", drop_oversize=False)
    assert list(zip(ds.starts.tolist(), ds.ends.tolist())) == fairseq_complete_slices(SIZES, block)


def test_complete_drops_oversize_blocks(stream):
    ds = LMBlockDataset(stream[0], 4, "complete")
    kept = [s for s in fairseq_complete_slices(SIZES, 4) if s[1] - s[0] <= 4]
    assert list(zip(ds.starts.tolist(), ds.ends.tolist())) == kept
    assert ds.num_dropped == len(fairseq_complete_slices(SIZES, 4)) - len(kept)


def test_none_cuts_the_stream_into_fixed_blocks(stream):
    data, flat = stream
    ds = LMBlockDataset(data, 8, "none")
    assert len(ds) == -(-len(flat) // 8)
    np.testing.assert_array_equal(np.concatenate([ds[i]["targets"] for i in range(len(ds))]), flat)


def test_source_is_previous_token_or_eos_at_sentence_start(stream):
    data, flat = stream
    ds = LMBlockDataset(data, 8, "none")
    sentence_starts = set(np.cumsum([0] + SIZES).tolist())
    for i in range(len(ds)):
        a = i * 8
        prev = 2 if a in sentence_starts else flat[a - 1]
        expected = np.concatenate([[prev], flat[a : a + 8][:-1]])
        np.testing.assert_array_equal(ds[i]["tokens"], expected)


def test_eos_mode_is_one_sentence_per_block(stream):
    data, flat = stream
    ds = LMBlockDataset(data, 9, "eos")
    offs = np.cumsum([0] + SIZES)
    kept = [k for k, n in enumerate(SIZES) if n <= 9]
    assert len(ds) == len(kept) and ds.num_dropped == len(SIZES) - len(kept)
    for j, k in enumerate(kept):
        np.testing.assert_array_equal(ds[j]["targets"], flat[offs[k] : offs[k + 1]])
        np.testing.assert_array_equal(ds[j]["tokens"], np.concatenate([[2], flat[offs[k] : offs[k + 1] - 1]]))


def test_packed_segments_reproduce_eos_mode_sentences(stream):
    data, _ = stream
    packed, eos = LMBlockDataset(data, 12, "packed"), LMBlockDataset(data, 12, "eos")
    pieces = []
    for i in range(len(packed)):
        item = packed[i]
        for seg in np.unique(item["segment_ids"]):
            mask = item["segment_ids"] == seg
            pieces.append((item["tokens"][mask].tolist(), item["targets"][mask].tolist()))
    assert pieces == [(eos[j]["tokens"].tolist(), eos[j]["targets"].tolist()) for j in range(len(eos))]


def test_tokens_per_sample_below_two_is_refused(stream):
    with pytest.raises(DataError, match="must be >= 2"):
        LMBlockDataset(stream[0], 1, "none")


def test_unknown_break_mode_is_refused(stream):
    with pytest.raises(DataError, match="unknown sample break mode"):
        LMBlockDataset(stream[0], 8, "sentence")


def test_blocks_match_fairseq_eval_lm_inputs(wiki103_tiny_fixture):
    ref = torch.load(wiki103_tiny_fixture / "logprobs.pt", weights_only=True)
    ds = build_lm_dataset(wiki103_tiny_fixture / "data-bin", "test", 128, "none")
    batch = next(iter(LMBatchIterator(ds, batch_size=4, shuffle=False)))
    assert torch.equal(batch["tokens"], ref["src_tokens"]) and torch.equal(batch["targets"], ref["target"])


def test_eval_lm_token_counts_none_and_eos(wiki103_tiny_fixture, shared_data):
    lines = (shared_data / "wikitext-2/test.txt").read_text(encoding="utf-8").split("\n")[:-1]
    lengths = [len(line.split()) + 1 for line in lines]
    none = build_lm_dataset(wiki103_tiny_fixture / "data-bin", "test", 128, "none")
    eos = build_lm_dataset(wiki103_tiny_fixture / "data-bin", "test", 128, "eos")
    assert (len(none), none.num_tokens) == (-(-sum(lengths) // 128), sum(lengths))
    assert eos.num_tokens == sum(n for n in lengths if n <= 128)
    assert eos.num_dropped == sum(n > 128 for n in lengths)
