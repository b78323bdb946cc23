"""The embedded corpus: deterministic, Zipfian with >= 20k types, and its entropy rate is right."""

import collections
import math

import numpy as np
import pytest

from adaptive_lm_ds.synthetic_corpus import CorpusSpec, MarkovCorpus, generate_corpus

SMALL = CorpusSpec(train_tokens=60_000, valid_tokens=5_000, test_tokens=5_000)


def test_same_spec_gives_same_bytes(tmp_path):
    generate_corpus(tmp_path / "a", SMALL)
    generate_corpus(tmp_path / "b", SMALL)
    for split in ("train", "valid", "test"):
        assert (tmp_path / "a" / f"{split}.txt").read_bytes() == (tmp_path / "b" / f"{split}.txt").read_bytes()


def test_splits_hold_the_requested_tokens_in_whole_sentences(tmp_path):
    stats = generate_corpus(tmp_path, SMALL)
    for split in ("train", "valid", "test"):
        lines = (tmp_path / f"{split}.txt").read_text().splitlines()
        tokens = sum(len(line.split()) + 1 for line in lines)  # + </s> per line, as fairseq counts
        assert tokens == stats["splits"][split]["tokens_with_eos"]
        assert tokens >= getattr(SMALL, f"{split}_tokens")
        assert tokens < getattr(SMALL, f"{split}_tokens") * 1.05


def test_default_corpus_has_a_large_zipfian_vocabulary(tmp_path):
    spec = CorpusSpec()
    generate_corpus(tmp_path, spec)
    counts = collections.Counter((tmp_path / "train.txt").read_text().split())
    assert len(counts) >= 20_000
    freqs = np.array(sorted(counts.values(), reverse=True), dtype=float)
    ranks = np.arange(10, 2000)
    slope = np.polyfit(np.log(ranks), np.log(freqs[ranks - 1]), 1)[0]
    assert -1.3 < slope < -0.5  # heavy-tailed, roughly power law


def test_entropy_rate_matches_the_sampled_log_likelihood():
    # Monte Carlo check of the closed form: -mean log P(next | class(prev)) over a long sample.
    corpus = MarkovCorpus(CorpusSpec(vocab_size=2_000, num_classes=8))
    ids = corpus.sample_ids(400_000, np.random.default_rng(0))
    prev_class = corpus.word_class[np.concatenate([[0], ids[:-1]])]
    nll = -np.log(corpus.probs[prev_class, ids]).mean()
    assert nll == pytest.approx(corpus.entropy_rate(), rel=0.01)
    assert corpus.entropy_rate() < corpus.unigram_entropy()


def test_stats_report_perplexities(tmp_path):
    stats = generate_corpus(tmp_path, SMALL)
    assert stats["true_perplexity"] == pytest.approx(math.exp(stats["entropy_rate_nats"]))
    assert 1.0 < stats["true_perplexity"] < stats["unigram_perplexity"]


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="favourite_weight"):
        CorpusSpec(favourite_weight=1.5)
