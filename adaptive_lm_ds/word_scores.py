"""fairseq-eval-lm's word-level outputs: ``--remove-bpe`` merging, ``--output-word-probs``, ``--output-word-stats``.

Each scored sample is its target tokens ``[T]`` and their fp32 natural-log probabilities ``[T]``, as
fairseq's ``SequenceScorer`` returns them. What eval-lm does with them, reproduced here line for line:

* ``--remove-bpe`` (:class:`SubwordMerge`): a token whose string ends with the continuation marker
  (``@@`` for subword-nmt) passes its score on to the next token (``scores[i + 1] += scores[i]`` in fp32,
  left to right) and is not counted, so the perplexity is per word.
* ``--output-word-probs``: per sample one line ``ID word [logp]\\tword [logp]...`` with fairseq's
  ``"{} [{:2f}]"`` format (six decimals), words glued back from their pieces.
* ``--output-word-stats``: per distinct word ``word, count, sum of log p (float64), is_bpe, sum of the
  next word's log p (summed in float32; ``0`` while nothing was added),
  count of words that had a next word``, most frequent first (ties in first-seen order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adaptive_lm_ds.data import Dictionary

SUBWORD_NMT = "@@ "  # fairseq's post_process "subword_nmt" removes this marker


class SubwordMerge:
    """``--remove-bpe MARKER``: merge the scores of subword pieces into their word's last piece."""

    def __init__(self, dictionary: Dictionary, marker: str):
        marker = SUBWORD_NMT if marker == "subword_nmt" else marker
        self.suffix = marker.rstrip()
        self.is_piece = torch.tensor([dictionary[i].endswith(self.suffix) for i in range(len(dictionary))])

    def merge(self, tokens: torch.Tensor, scores: torch.Tensor) -> int:
        """In place on ``scores`` (fp32 ``[T]``); returns how many pieces were folded into the next token."""
        pieces = self.is_piece[tokens[:-1]].nonzero().squeeze(1).tolist()  # the last token is never folded
        for i in pieces:
            scores[i + 1] += scores[i]
            scores[i] = 0
        return len(pieces)


@dataclass
class WordStat:
    """fairseq's ``WordStat``: one word's count, summed log p, and the summed log p of the word after it."""

    word: str
    is_bpe: bool
    count: int = 0
    log_prob: float = 0.0
    next_word_prob: torch.Tensor | int = 0
    missing_next_words: int = 0

    def add(self, log_prob: float, next_word_prob: torch.Tensor | None) -> None:
        if next_word_prob is None:
            self.missing_next_words += 1
        else:
            self.next_word_prob = self.next_word_prob + next_word_prob  # fp32, as fairseq sums tensors
        self.log_prob += log_prob
        self.count += 1

    def __str__(self) -> str:
        # format() of a 0-dim tensor formats its value (a float32 number printed as a Python float)
        fields = (self.word, self.count, self.log_prob, self.is_bpe, self.next_word_prob)
        return "{}\t{}\t{}\t{}\t{}\t{}".format(*fields, self.count - self.missing_next_words)


@dataclass
class WordScores:
    """Collects the samples' words for ``--output-word-probs`` / ``--output-word-stats`` (module docstring)."""

    dictionary: Dictionary
    subwords: SubwordMerge | None = None
    samples: list[tuple[int, list[tuple[str, float]]]] = field(default_factory=list)
    stats: dict[str, WordStat] = field(default_factory=dict)

    def add(self, sample_id: int, tokens: torch.Tensor, scores: torch.Tensor) -> None:
        """One sample: target ids ``[T]`` and their (already merged) fp32 log p ``[T]``."""
        suffix = self.subwords.suffix if self.subwords else ""
        word, is_bpe, words = "", False, []
        ids = tokens.tolist()
        nonzero = (scores != 0).tolist()
        for i, token in enumerate(ids):
            word += self.dictionary[token]
            if self.subwords is not None and bool(self.subwords.is_piece[token]):
                word, is_bpe = word[: -len(suffix)], True
                continue
            score = scores[i].item()
            words.append((word, score))
            after = next((j for j in range(i + 1, len(ids)) if nonzero[j]), None)
            stat = self.stats.setdefault(word, WordStat(word, is_bpe))
            stat.add(score, None if after is None else scores[after])
            word, is_bpe = "", False
        self.samples.append((sample_id, words))

    def prob_lines(self) -> list[str]:
        return [f"{i} " + "\t".join(f"{w} [{p:2f}]" for w, p in words) for i, words in self.samples]

    def stat_lines(self) -> list[str]:
        return [str(s) for s in sorted(self.stats.values(), key=lambda s: s.count, reverse=True)]
