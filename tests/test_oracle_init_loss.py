"""A fresh model's loss matches fairseq's own initialisation of the same architecture (the oracle).

The initial loss is a random variable over seeds; both inits are compared by their means over
``SEEDS`` seeds on one batch. Reference: fairseq's ``build_model`` after ``torch.manual_seed(seed)``.
"""

import statistics

import pytest

from adaptive_lm_ds.config import gbw_huge, wiki103

from .init_loss import fairseq_initial_nll, our_initial_nll, zipf_batch

SEEDS = list(range(1, 17))
VOCAB = 4000
SMALL = dict(embed_dim=512, ffn_dim=4096, num_layers=8, num_heads=4, max_positions=64,
             adaptive_input_cutoffs=(400, 1600), adaptive_softmax_cutoffs=(400, 1600))  # fmt: skip


@pytest.mark.parametrize("preset", [wiki103, gbw_huge], ids=["wiki103", "gbw_huge"])
def test_initial_loss_matches_fairseq_init(fairseq_oracle, tmp_path, preset):
    """Means within 3 standard errors of their difference (two independent samples of 16 seeds).

    With the same distributions the difference of means is ~N(0, se): a false failure has p < 0.003
    (and the seeds are fixed, so the outcome is deterministic, not flaky). The pre-fix init (xavier
    FFN, zero biases) was 4.4 se (wiki103) and 3.7 se (gbw_huge) above fairseq at these shapes; the
    fixed one is 0.4 and -1.2 se (docs/model.md). d 512 / FFN 4096 / 8 layers: large enough that the
    FFN init shows, small enough for seconds on a CPU.
    """
    cfg = preset(VOCAB, **SMALL)
    tokens, targets = zipf_batch(VOCAB)
    ours = our_initial_nll(cfg, SEEDS, tokens, targets)
    theirs = fairseq_initial_nll(fairseq_oracle, cfg, SEEDS, tokens, targets, tmp_path)
    se = (statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)) ** 0.5
    diff = statistics.mean(ours) - statistics.mean(theirs)
    assert abs(diff) < 3 * se, f"ours {ours} vs fairseq {theirs}: mean difference {diff:.3f} nats, se {se:.3f}"
