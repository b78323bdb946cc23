"""Language-model evaluation with ``fairseq-eval-lm``'s semantics (used by adaptive-lm-eval and tests).

Samples are the blocks of :func:`adaptive_lm_ds.data.build_lm_dataset` (break modes none / complete /
eos), with fairseq's rules:

* **Oversize samples** (longer than the model's ``max_positions``) are skipped, as eval-lm's batch
  iterator does ("N samples have invalid sizes and will be skipped").
* **Context window** ``C`` (fairseq's ``LMContextWindowDataset``): the block size becomes
  ``tokens_per_sample - C`` (:func:`eval_block_size`), and each block's inputs are placed after up to
  ``C`` preceding *inputs* (the previous blocks', in order), which are fed to the model but not
  scored. Every token is therefore scored exactly once, with up to ``C`` tokens of extra context.
  Positions start at the window's first token, as in fairseq (context and block share one row).
* **Accumulation**: each sample's ``log p`` are summed in float32 and added to a float32 running
  total, as eval-lm does; ``loss_base2 = -total / count / ln 2`` and ``perplexity = 2 ** loss_base2``.
  Scores that are +-inf are dropped and not counted (eval-lm's rule). With ``--remove-bpe`` subword
  pieces pass their score on to the next token first and are not counted (:mod:`adaptive_lm_ds.word_scores`).
* **Softmax batch** ``S`` (``--softmax-batch``): when a batch has ``B x L >= S`` positions, the output
  layer runs over ``S`` positions at a time (fairseq's ``SequenceScorer``), bounding its memory.

Batching packs windows (right-padded with ``<pad>``) up to ``max_tokens`` per batch; with a causal
model, right padding changes nothing. ``model.target_log_probs`` gives exact per-target log-probs under
any tensor-parallel size without gathering a band; every TP rank evaluates the same batches.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from adaptive_lm_ds.data import DataError, LMBlockDataset
from adaptive_lm_ds.word_scores import SubwordMerge, WordScores


@dataclass(frozen=True)
class Window:
    """One model row: ``tokens``/``targets`` int64 [L]; only ``targets[score_from:]`` are scored."""

    sample_id: int
    tokens: np.ndarray
    targets: np.ndarray
    score_from: int


@dataclass
class EvalResult:
    tokens: int
    loss_base2: float
    loss_nats: float
    perplexity: float
    skipped_samples: int = 0
    skipped_inf_scores: int = 0

    def as_json(self) -> dict:
        keys = ("tokens", "loss_base2", "loss_nats", "perplexity", "skipped_samples", "skipped_inf_scores")
        return {k: getattr(self, k) for k in keys}

    def evaluated_line(self, seconds: float) -> str:
        """fairseq's line after the last batch (word stats, if any, follow it)."""
        rate = self.tokens / seconds if seconds > 0 else float("inf")
        return f"Evaluated {self.tokens:,} tokens in {seconds:.1f}s ({rate:.2f} tokens/s)"

    def loss_line(self) -> str:
        """fairseq's closing line, with the loss in nats added."""
        loss = f"Loss (base 2): {self.loss_base2:.4f}, Perplexity: {self.perplexity:.2f}"
        return f"{loss} (loss {self.loss_nats:.4f} nats)"

    def summary(self, seconds: float) -> str:
        return f"{self.evaluated_line(seconds)}\n{self.loss_line()}"


def eval_block_size(tokens_per_sample: int, context_window: int) -> int:
    """fairseq-eval-lm lowers ``tokens_per_sample`` by the context window; both must leave room."""
    if context_window < 0:
        raise DataError(f"--context-window {context_window} must be >= 0")
    if context_window >= tokens_per_sample:
        raise DataError(
            f"--context-window {context_window} must be smaller than --tokens-per-sample {tokens_per_sample}"
        )
    return tokens_per_sample - context_window


def sample_order(sizes: np.ndarray, context_window: int, seed: int = 1) -> np.ndarray:
    """The order in which eval-lm visits (and sums) the samples.

    With a context window, dataset order (``LMContextWindowDataset``). Without one, fairseq's
    ``MonolingualDataset.ordered_indices`` under ``numpy_seed(seed)``: by size, ties in a random
    permutation. Only the float32 running total depends on it, but that is what eval-lm prints.
    """
    if context_window > 0:
        return np.arange(len(sizes))
    permutation = np.random.RandomState(seed).permutation(len(sizes))
    return np.lexsort([permutation, sizes])


def kept_samples(dataset: LMBlockDataset, order: np.ndarray, max_positions: int) -> tuple[np.ndarray, int]:
    """``order`` without the samples eval-lm skips (size > the model's max positions), and their number."""
    keep = order[dataset.sizes[order] <= max_positions]
    return keep, len(order) - len(keep)


def windows(dataset: LMBlockDataset, indices: np.ndarray, context_window: int) -> Iterator[Window]:
    """Model rows in dataset order; with a context window, each preceded by earlier inputs (fairseq)."""
    block = dataset.tokens_per_sample
    prev = np.zeros(0, dtype=np.int64)
    for i in indices:
        item = dataset[int(i)]
        tokens, targets = np.asarray(item["tokens"], np.int64), np.asarray(item["targets"], np.int64)
        if context_window == 0:
            yield Window(int(i), tokens, targets, 0)
            continue
        extra = len(prev) + len(tokens) - (block + context_window)
        if extra > 0:
            prev = prev[extra:]
        row = np.concatenate([prev, tokens])
        yield Window(int(i), row, np.concatenate([np.full(len(prev), -1, np.int64), targets]), len(prev))
        prev = row[-context_window:]


def batches(rows: Iterator[Window], max_tokens: int, batch_size: int | None) -> Iterator[list[Window]]:
    """Consecutive windows grouped so that ``rows * longest <= max_tokens`` (and ``<= batch_size`` rows)."""
    group: list[Window] = []
    longest = 0
    for w in rows:
        new_longest = max(longest, len(w.tokens))
        full = group and ((len(group) + 1) * new_longest > max_tokens or len(group) == (batch_size or math.inf))
        if full:
            yield group
            group, new_longest = [], len(w.tokens)
        group.append(w)
        longest = new_longest
    if group:
        yield group


def collate_windows(group: list[Window], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` int64 tokens and targets, right-padded with ``pad`` (context targets also ``pad``)."""
    length = max(len(w.tokens) for w in group)
    tokens = np.full((len(group), length), pad, dtype=np.int64)
    targets = np.full((len(group), length), pad, dtype=np.int64)
    for row, w in enumerate(group):
        tokens[row, : len(w.tokens)] = w.tokens
        targets[row, w.score_from : len(w.targets)] = w.targets[w.score_from :]
    return torch.from_numpy(tokens), torch.from_numpy(targets)


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    dataset: LMBlockDataset,
    *,
    context_window: int = 0,
    max_positions: int | None = None,
    max_tokens: int = 36000,
    batch_size: int | None = None,
    max_samples: int | None = None,
    seed: int = 1,
    softmax_batch: int | None = None,
    subwords: SubwordMerge | None = None,
    words: WordScores | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score every target of ``dataset`` once (see the module docstring); ``model`` is an ``AdaptiveLM``.

    ``dataset`` must already use the lowered block size (:func:`eval_block_size`). ``max_samples``
    evaluates a prefix (the first samples of the dataset, visited in eval-lm's order); ``seed`` is
    eval-lm's ``--seed``; ``softmax_batch`` its ``--softmax-batch``; ``subwords`` its ``--remove-bpe``.
    ``words`` collects every sample's words and scores (``--output-word-probs`` / ``--output-word-stats``).
    ``progress``: a bar of samples scored on stderr.
    """
    model.eval()
    device = next(model.parameters()).device
    max_positions = max_positions or model.cfg.max_positions
    pad = model.cfg.padding_idx
    sizes = dataset.sizes if max_samples is None else dataset.sizes[:max_samples]
    indices, skipped = kept_samples(dataset, sample_order(sizes, context_window, seed), max_positions)
    total = torch.zeros((), dtype=torch.float32)
    count = skipped_inf = 0
    bar = tqdm(total=len(indices), unit="sample", file=sys.stderr, disable=not progress, leave=False)
    for group in batches(windows(dataset, indices, context_window), max_tokens, batch_size):
        bar.update(len(group))
        tokens, targets = collate_windows(group, pad)
        lp = model.target_log_probs(tokens.to(device), targets.to(device), softmax_batch=softmax_batch)
        lp = lp.float().cpu()
        for row, w in enumerate(group):
            scores = lp[row, w.score_from : len(w.targets)].clone()
            scored_targets = torch.from_numpy(w.targets[w.score_from :])
            pieces = subwords.merge(scored_targets, scores) if subwords is not None else 0
            if words is not None:
                words.add(w.sample_id, scored_targets, scores)
            finite = torch.isfinite(scores)
            if not bool(finite.all()):
                skipped_inf += int((~finite).sum())
                scores = scores[finite]
            total += scores.sum()
            count += scores.numel() - pieces
    bar.close()
    if count == 0:
        raise DataError("nothing to evaluate: every sample was skipped or the split is empty")
    loss_base2 = float(-total / count / math.log(2))  # float32 arithmetic, as eval-lm
    loss_nats = float(-total.double() / count)
    return EvalResult(count, loss_base2, loss_nats, 2.0**loss_base2, int(skipped), skipped_inf)
