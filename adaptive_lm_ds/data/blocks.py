"""Token blocks for causal LM training/evaluation, with fairseq's ``TokenBlockDataset`` semantics.

Break modes (``--sample-break-mode``), over the flat token stream of an :class:`IndexedTokens`:

* ``none``: the stream cut into consecutive blocks of ``tokens_per_sample`` (the last one shorter).
* ``complete``: whole sentences packed greedily in order up to ``tokens_per_sample``.
* ``eos``: one sentence per block.
* ``packed``: ``complete`` blocks that also carry ``segment_ids`` (sentence index inside the block),
  so the model can restart positions per sentence and attend block-diagonally: every sentence is
  then seen exactly as in ``eos`` mode, without the padding that one sentence per row costs.

A block ``[a, b)`` of the stream gives ``targets = stream[a:b]`` and ``tokens`` (the input) =
``[prev] + stream[a:b-1]`` where ``prev`` is ``</s>`` when ``a`` starts a sentence (the first
block of the stream included) and ``stream[a-1]`` otherwise, as fairseq's ``TokenBlockDataset``
with ``include_targets=True``. In ``packed`` mode every sentence's first input is ``</s>``.
Blocks longer than ``tokens_per_sample`` (a single long sentence in eos/complete/packed modes) are
dropped, as ``fairseq-eval-lm`` skips them ("samples have invalid sizes"); ``num_dropped`` counts them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from adaptive_lm_ds.data import fingerprint
from adaptive_lm_ds.data.dictionary import Dictionary
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.indexed import IndexedTokens

BREAK_MODES = ("none", "complete", "eos", "packed")


def block_bounds(
    sentence_offsets: np.ndarray, tokens_per_sample: int, break_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end token offsets (int64 [blocks]) of every block, before dropping oversize ones.

    ``sentence_offsets`` is int64 [n+1], the running token offsets of the sentences.
    Vectorised: ``complete`` computes every sentence's greedy successor with one ``searchsorted``
    and then only walks the chain of block starts (one step per block).
    """
    if tokens_per_sample < 2:
        raise DataError(f"tokens_per_sample={tokens_per_sample} must be >= 2 (an input and its target)")
    if break_mode not in BREAK_MODES:
        raise DataError(f"unknown sample break mode {break_mode!r}; choose one of {BREAK_MODES}")
    total = int(sentence_offsets[-1])
    if break_mode == "none":
        starts = np.arange(0, total, tokens_per_sample, dtype=np.int64)
        return starts, np.minimum(starts + tokens_per_sample, total)
    if break_mode == "eos":
        return sentence_offsets[:-1].copy(), sentence_offsets[1:].copy()
    n = len(sentence_offsets) - 1
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # greedy successor: the first sentence that no longer fits after sentence s (at least s + 1)
    succ = np.searchsorted(sentence_offsets, sentence_offsets[:-1] + tokens_per_sample, side="right") - 1
    np.maximum(succ, np.arange(1, n + 1), out=succ)
    first = _walk_chain(succ, n)
    return sentence_offsets[first[:-1]], sentence_offsets[first[1:]]


def _walk_chain(succ: np.ndarray, n: int) -> np.ndarray:
    """Sentence indices 0, succ[0], succ[succ[0]], ..., n (int64); one Python step per block."""
    nxt = memoryview(succ.astype(np.int64, copy=False))
    out = [0]
    append = out.append
    s = 0
    while s < n:
        s = nxt[s]
        append(s)
    return np.asarray(out, dtype=np.int64)


class LMBlockDataset:
    """Blocks of an :class:`IndexedTokens` (memory-mapped; only block bounds live in RAM).

    ``dataset[i]`` -> dict of int64 numpy arrays ``tokens`` [L], ``targets`` [L] and, in ``packed``
    mode, ``segment_ids`` [L]; ``sizes`` int64 [len] are the block lengths L.
    """

    def __init__(
        self,
        tokens: IndexedTokens,
        tokens_per_sample: int,
        break_mode: str = "none",
        eos: int = 2,
        drop_oversize: bool = True,
        dictionary: Dictionary | None = None,
    ) -> None:
        self.dictionary = dictionary
        self.data, self.tokens_per_sample, self.break_mode, self.eos = tokens, tokens_per_sample, break_mode, eos
        starts, ends = block_bounds(tokens.sentence_offsets, tokens_per_sample, break_mode)
        self.num_dropped = 0
        if drop_oversize and break_mode != "none":
            keep = (ends - starts) <= tokens_per_sample
            self.num_dropped = int(len(keep) - np.count_nonzero(keep))
            if self.num_dropped:
                starts, ends = starts[keep], ends[keep]
        self.starts, self.ends = starts, ends

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def sizes(self) -> np.ndarray:
        return self.ends - self.starts

    @property
    def num_tokens(self) -> int:
        """Targets over all blocks (what an evaluation scores)."""
        return int(self.sizes.sum())

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        a, b = int(self.starts[i]), int(self.ends[i])
        offsets = self.data.sentence_offsets
        if a > 0:
            window = self.data.read(a - 1, b)
            targets = window[1:]
            tokens = window[:-1].copy()
            if offsets[np.searchsorted(offsets, a)] == a:
                tokens[0] = self.eos
        else:
            targets = self.data.read(a, b)
            tokens = np.concatenate([[self.eos], targets[:-1]]).astype(np.int64)
        item = {"tokens": tokens, "targets": targets}
        if self.break_mode == "packed":
            first, last = np.searchsorted(offsets, [a, b])
            seg_starts = offsets[first:last] - a
            lengths = np.diff(np.append(seg_starts, b - a))
            item["segment_ids"] = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
            tokens[seg_starts] = self.eos
        return item


def build_lm_dataset(
    data_dir: str | os.PathLike,
    split: str,
    tokens_per_sample: int,
    break_mode: str = "none",
    check_ids: bool = True,
    drop_oversize: bool = True,
) -> LMBlockDataset:
    """The one entry point for training/eval: ``DATA_DIR/dict.txt`` + ``DATA_DIR/{split}.{bin,idx}``.

    Checks (clear ``DataError``): files exist and agree, ``dict.txt`` is the dictionary the split was
    made with (:mod:`~adaptive_lm_ds.data.fingerprint`), ``tokens_per_sample >= 2``, and (with
    ``check_ids``, one streamed pass over the ids) every id is < the dictionary size.
    """
    if tokens_per_sample < 2:
        raise DataError(f"--tokens-per-sample {tokens_per_sample} must be >= 2 (an input and its target)")
    data_dir = Path(data_dir)
    dictionary = Dictionary.load(data_dir / "dict.txt")
    tokens = IndexedTokens(data_dir / split)
    fingerprint.check(data_dir / split, dictionary, data_dir / "dict.txt")
    if check_ids:
        tokens.check_ids(len(dictionary))
    return LMBlockDataset(tokens, tokens_per_sample, break_mode, dictionary.eos(), drop_oversize, dictionary)
