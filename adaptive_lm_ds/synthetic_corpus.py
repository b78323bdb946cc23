"""A deterministic word-level corpus whose true perplexity is known exactly.

The demo and the tests need a corpus that (a) ships with the code (no network, no ../shared),
(b) has a Zipfian vocabulary large enough that adaptive frequency bands matter (>= 20k types),
and (c) has learnable structure with a *known* entropy rate, so a trained model's perplexity can be
printed beside the best achievable one.

The process is a class-conditioned Markov chain over words. Every word ``w`` belongs to one of
``num_classes`` classes ``c(w)``; the next word is drawn from ``P[c(w)]``, a mixture of a shared
Zipfian unigram and a sparse class-specific distribution over a few hundred "favourite" words::

    P[c] = (1 - lam) * zipf  +  lam * favourites[c]           (over the whole vocabulary)

The end-of-sentence symbol ``</s>`` is a word of its own class 0; a sentence is the run of words
between two ``</s>``. Because the next-word distribution depends only on the class of the current
word, the class sequence is a Markov chain with transition matrix ``T[c, c'] = sum_{w in c'} P[c](w)``
and the entropy rate of the word process is exactly::

    H = sum_c pi[c] * H(P[c])        (nats per token, ``</s>`` included, as fairseq counts it)

with ``pi`` the stationary distribution of ``T``. A model that has learned the process perfectly has
perplexity ``exp(H)``; a unigram model has ``exp(H(p_unigram))``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

EOS = "</s>"


@dataclass(frozen=True)
class CorpusSpec:
    """Shape of the synthetic corpus; the defaults make the demo's corpus (2M train tokens)."""

    vocab_size: int = 28_000  # word types, </s> excluded (~25k of them occur in train)
    num_classes: int = 32
    zipf_exponent: float = 1.1
    favourites_per_class: int = 200
    favourite_weight: float = 0.7  # lam above
    eos_prob: float = 0.05  # P(</s>) inside zipf: mean sentence length ~20
    train_tokens: int = 2_000_000
    valid_tokens: int = 100_000
    test_tokens: int = 100_000
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.vocab_size < self.num_classes or self.num_classes < 2:
            raise ValueError("synthetic corpus: need vocab_size >= num_classes >= 2")
        if not 0.0 <= self.favourite_weight < 1.0 or not 0.0 < self.eos_prob < 1.0:
            raise ValueError("synthetic corpus: favourite_weight must be in [0, 1) and eos_prob in (0, 1)")


class MarkovCorpus:
    """The process of the module docstring, with its exact entropy rate.

    Word ids here: 0 is ``</s>``, 1..vocab_size are words ``w1..wN`` (ordered by Zipf rank).
    """

    def __init__(self, spec: CorpusSpec):
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        n = spec.vocab_size + 1
        ranks = np.arange(1, spec.vocab_size + 1, dtype=np.float64)
        zipf = np.concatenate([[0.0], ranks**-spec.zipf_exponent])
        zipf *= (1.0 - spec.eos_prob) / zipf.sum()
        zipf[0] = spec.eos_prob
        # Class of every word; </s> alone in class 0.
        self.word_class = np.concatenate([[0], rng.integers(1, spec.num_classes, size=spec.vocab_size)])
        probs = np.empty((spec.num_classes, n))
        for c in range(spec.num_classes):
            fav = rng.choice(np.arange(1, n), size=spec.favourites_per_class, replace=False)
            weights = rng.pareto(1.5, size=fav.size) + 1.0
            sparse = np.zeros(n)
            sparse[fav] = weights / weights.sum() * (1.0 - spec.eos_prob)
            sparse[0] = spec.eos_prob
            probs[c] = (1.0 - spec.favourite_weight) * zipf + spec.favourite_weight * sparse
        self.probs = probs / probs.sum(axis=1, keepdims=True)  # [classes, words]
        self._cdf = np.cumsum(self.probs, axis=1)
        self._cdf[:, -1] = 1.0

    # -- exact statistics -------------------------------------------------------------------------
    def class_stationary(self) -> np.ndarray:
        """Stationary distribution of the class chain, ``pi T = pi``."""
        k = self.spec.num_classes
        trans = np.zeros((k, k))
        for c in range(k):
            trans[c] = np.bincount(self.word_class, weights=self.probs[c], minlength=k)
        eigvals, eigvecs = np.linalg.eig(trans.T)
        pi = np.real(eigvecs[:, np.argmin(np.abs(eigvals - 1.0))])
        return pi / pi.sum()

    def entropy_rate(self) -> float:
        """Nats per token (``</s>`` included) of the process: the best achievable loss."""
        p = self.probs
        row_entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
        return float(self.class_stationary() @ row_entropy)

    def unigram_entropy(self) -> float:
        """Nats per token of the stationary unigram distribution (a context-free model's best)."""
        unigram = self.class_stationary() @ self.probs
        return float(-(unigram * np.log(np.where(unigram > 0, unigram, 1.0))).sum())

    # -- sampling --------------------------------------------------------------------------------
    def sample_ids(self, num_tokens: int, rng: np.random.Generator, streams: int = 512) -> np.ndarray:
        """``num_tokens`` word ids from ``streams`` independent chains, each started at ``</s>``.

        Vectorised over streams: one ``searchsorted`` per step on the flattened per-class CDFs,
        shifted by the class index so all rows share one sorted array.
        """
        steps = -(-num_tokens * 11 // (10 * streams)) + 64  # oversample: streams end on a </s>
        n = self.probs.shape[1]
        k = self.spec.num_classes
        flat_cdf = (self._cdf + np.arange(k)[:, None]).ravel()
        out = np.empty((streams, steps), dtype=np.int64)
        state = np.zeros(streams, dtype=np.int64)  # class of the previous word
        for t in range(steps):
            u = rng.random(streams)
            flat = np.searchsorted(flat_cdf, state + u, side="right")
            word = np.minimum(flat - state * n, n - 1)
            out[:, t] = word
            state = self.word_class[word]
        # Streams are cut after their last </s> and concatenated; the result is cut after the first
        # </s> at or past num_tokens, so no sentence is ever split.
        ids = np.concatenate([row[: np.flatnonzero(row == 0)[-1] + 1] for row in out if (row == 0).any()])
        ends = np.flatnonzero(ids[num_tokens - 1 :] == 0)
        return ids[: num_tokens + int(ends[0])] if ends.size else ids


def write_lines(ids: np.ndarray, path: Path) -> int:
    """Write ids as text, one sentence per line (``</s>`` = line end); returns lines written."""
    ends = np.flatnonzero(ids == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    words = np.array([EOS] + [f"w{i}" for i in range(1, int(ids.max(initial=0)) + 1)], dtype=object)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s, e in zip(starts, ends):
            f.write(" ".join(words[ids[s:e]]) + "\n")
    tmp.replace(path)
    return len(ends)


def generate_corpus(out_dir: str | Path, spec: CorpusSpec = CorpusSpec()) -> dict:
    """Write ``train.txt``, ``valid.txt``, ``test.txt`` and ``corpus_stats.json`` to ``out_dir``.

    The same spec always gives the same bytes. Returns the stats (also written to JSON).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = MarkovCorpus(spec)
    stats: dict = {"spec": asdict(spec), "splits": {}}
    for offset, split in enumerate(("train", "valid", "test")):
        rng = np.random.default_rng([spec.seed, offset + 1])
        ids = corpus.sample_ids(getattr(spec, f"{split}_tokens"), rng)
        lines = write_lines(ids, out / f"{split}.txt")
        stats["splits"][split] = {"tokens_with_eos": int(ids.size), "sentences": lines}
    h = corpus.entropy_rate()
    stats.update(
        entropy_rate_nats=h,
        true_perplexity=math.exp(h),
        unigram_perplexity=math.exp(corpus.unigram_entropy()),
    )
    tmp = out / "corpus_stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=1) + "\n")
    tmp.replace(out / "corpus_stats.json")
    return stats
