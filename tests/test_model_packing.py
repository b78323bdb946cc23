"""Packed sentences (segment ids): positions restart and attention stays inside each sentence."""

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.model import AdaptiveLM, make_positions


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    with parallel.single_process(seed=0):
        yield


@pytest.mark.parametrize("learned_pos", [False, True])
def test_packed_block_equals_each_sentence_alone(learned_pos):
    model = AdaptiveLM(tiny(200, learned_pos=learned_pos)).eval()
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3, 8]
    sentences = [torch.randint(2, 200, (1, n), generator=g) for n in lengths]
    targets = [torch.randint(2, 200, (1, n), generator=g) for n in lengths]
    segments = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    packed = model.target_log_probs(torch.cat(sentences, 1), torch.cat(targets, 1), segment_ids=segments)
    alone = torch.cat([model.target_log_probs(s, t) for s, t in zip(sentences, targets)], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    unmasked = model.target_log_probs(torch.cat(sentences, 1), torch.cat(targets, 1))
    assert (unmasked[0, 5:] - alone[0, 5:]).abs().max() > 1e-3  # without segments context leaks


def test_positions_count_non_pad_tokens_per_segment_from_padding_idx_plus_one():
    tokens = torch.tensor([[1, 1, 7, 8, 9, 4, 5, 1]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    expected = []
    for row_t, row_s in zip(tokens.tolist(), segments.tolist()):  # the definition, one token at a time
        count, previous, out = 0, None, []
        for tok, seg in zip(row_t, row_s):
            count = 0 if seg != previous else count
            previous = seg
            count += tok != 1
            out.append(count + 1 if tok != 1 else 1)
        expected.append(out)
    assert make_positions(tokens, 1, segments).tolist() == expected
    assert make_positions(tokens, 1).tolist() == [[1, 1, 2, 3, 4, 5, 6, 1]]
