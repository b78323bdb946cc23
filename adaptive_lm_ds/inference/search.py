"""Choosing the next token from the adaptive softmax: fairseq's greedy and sampling rules, tails on demand.

(``beam > 1`` and ``no_repeat_ngram_size`` run fairseq's beam loop instead: inference/beam_search.py.)

fairseq's ``SequenceGenerator`` (``beam=1``) turns the model's log-probabilities over the whole vocabulary
into the next token: ``<pad>`` is never chosen, ``unkpen`` is subtracted from ``<unk>``, ``</s>`` is
forbidden before ``min_len`` and forced at ``max_len``, prefix tokens are forced (and scored). Greedy
search takes the arg-max, sampling draws from ``exp(log p)`` (``torch.multinomial``; top-k keeps the k
best, top-p fairseq's nucleus), and the step's score is the chosen token's (penalised) log-probability.

Here the full distribution is never built unless top-k/top-p needs it. The softmax's head gives the
exact log p of every band-0 word and of each tail cluster (:meth:`head_log_probs`); a tail ``i`` word
has ``log p <= log p(cluster i)``, so

* greedy computes tail ``i`` only for the rows whose cluster beats their best word so far (exact
  arg-max; usually no tail at all);
* plain sampling draws among the head's words and clusters, then within the drawn cluster's tail
  only (the same distribution as a draw over the whole vocabulary);
* a forced (prefix) token in a tail computes that tail for its rows only.

All specials (``<pad>``, ``</s>``, ``<unk>``) are band-0 words. Every TP rank runs the same code on the
same replicated numbers (the head is all-gathered) with identically seeded generators, so all ranks
choose the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.layers.adaptive_softmax import VocabParallelAdaptiveSoftmax


class GenerationError(UserError, ValueError):
    """Generation options or inputs that cannot work; the message says which and what to do."""


@dataclass(frozen=True)
class GenerationConfig:
    """fairseq's generation options (``fairseq.dataclass.configs.GenerationConfig`` names and defaults)."""

    beam: int = 1
    sampling: bool = False
    sampling_topk: int = -1
    sampling_topp: float = -1.0
    temperature: float = 1.0
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    lenpen: float = 1.0
    unnormalized: bool = False
    unkpen: float = 0.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    use_cache: bool = True

    @property
    def needs_beam_search(self) -> bool:
        """Whether the beam loop (inference/beam_search.py) runs; else the beam-1 decoder (generator.py)."""
        return self.beam > 1 or self.no_repeat_ngram_size > 0

    def validate(self) -> GenerationConfig:
        if self.beam < 1:
            raise GenerationError(f"beam={self.beam} must be >= 1")
        if self.no_repeat_ngram_size < 0:
            raise GenerationError(f"no_repeat_ngram_size={self.no_repeat_ngram_size} must be >= 0")
        if self.temperature <= 0:
            raise GenerationError(f"temperature={self.temperature} must be > 0")
        if (self.sampling_topk > 0 or self.sampling_topp > 0) and not self.sampling:
            raise GenerationError("sampling_topk / sampling_topp need sampling=True (--sampling), as in fairseq")
        if self.sampling_topp > 1:
            raise GenerationError(f"sampling_topp={self.sampling_topp} must be in (0, 1]")
        if self.min_len < 0 or self.max_len_b < 0 or self.max_len_a < 0:
            raise GenerationError(
                f"min_len={self.min_len}, max_len_a={self.max_len_a} and max_len_b={self.max_len_b} must be >= 0"
            )
        return self


@dataclass(frozen=True)
class Specials:
    pad: int
    eos: int
    unk: int


class TokenChooser:
    """One decoding step: ``h [N, d]`` (already divided by the temperature) -> ``(tokens [N], scores [N])``."""

    def __init__(
        self,
        softmax: VocabParallelAdaptiveSoftmax,
        cfg: GenerationConfig,
        specials: Specials,
        generator: torch.Generator | None,
    ):
        self.softmax, self.cfg, self.sp, self.generator = softmax, cfg, specials, generator
        self.starts = [band.start for band in softmax.out_bands]

    def choose(
        self, h: torch.Tensor, step: int, max_len: int, forced: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forced [N]``: the prefix token a row must take at this step, or -1 where the row is free."""
        sp = self.sp
        words, clusters = self.softmax.head_log_probs(h)
        words[:, sp.pad] = -math.inf
        words[:, sp.unk] -= self.cfg.unkpen
        if step >= max_len:  # the last step: </s> for everyone
            return torch.full_like(forced, sp.eos), words[:, sp.eos].clone()
        tokens = forced.clone()
        scores = torch.empty(len(forced), dtype=torch.float, device=h.device)
        is_forced = forced >= 0
        if bool(is_forced.any()):
            rows = is_forced.nonzero().squeeze(1)
            scores[rows] = self._score_of(h[rows], words[rows], clusters[rows], forced[rows])
        free = (~is_forced).nonzero().squeeze(1)
        if len(free):
            if step < self.cfg.min_len:
                words[free, sp.eos] = -math.inf
            tokens[free], scores[free] = self._pick(h[free], words[free], clusters[free])
        return tokens, scores

    # ------------------------------------------------------------------ pieces
    def _tail(self, i: int, h: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        return self.softmax.tail_log_probs(i, h, clusters[:, i])

    def _score_of(self, h, words, clusters, tokens) -> torch.Tensor:
        """Exact (penalised) log p of given tokens; a tail only for the rows whose token is in it."""
        band = torch.bucketize(tokens, torch.tensor(self.starts[1:], device=tokens.device), right=True)
        out = words.gather(1, torch.where(band == 0, tokens, 0).unsqueeze(1)).squeeze(1)
        for i in range(len(self.starts) - 1):
            rows = (band == i + 1).nonzero().squeeze(1)
            if len(rows):
                tail = self._tail(i, h[rows], clusters[rows])
                out[rows] = tail.gather(1, (tokens[rows] - self.starts[i + 1]).unsqueeze(1)).squeeze(1)
        return out

    def _pick(self, h, words, clusters) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.sampling:
            return self._greedy(h, words, clusters)
        if self.cfg.sampling_topk > 0 or self.cfg.sampling_topp > 0:
            return self._sample_truncated(h, words, clusters)
        return self._sample(h, words, clusters)

    def _greedy(self, h, words, clusters) -> tuple[torch.Tensor, torch.Tensor]:
        best, token = words.max(dim=1)
        for i in range(clusters.shape[1]):
            rows = (clusters[:, i] > best).nonzero().squeeze(1)  # only there can a tail word win
            if len(rows):
                value, index = self._tail(i, h[rows], clusters[rows]).max(dim=1)
                better = value > best[rows]
                best[rows] = torch.where(better, value, best[rows])
                token[rows] = torch.where(better, index + self.starts[i + 1], token[rows])
        return token, best

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(probs, 1, replacement=True, generator=self.generator).squeeze(1)

    def _sample(self, h, words, clusters) -> tuple[torch.Tensor, torch.Tensor]:
        """A draw over the head's words and clusters, then within the drawn cluster's tail."""
        n0 = words.shape[1]
        head = torch.cat([words, clusters], dim=1)
        choice = self._draw(head.exp())
        token = choice.clone()
        score = head.gather(1, choice.unsqueeze(1)).squeeze(1)
        for i in range(clusters.shape[1]):
            rows = (choice == n0 + i).nonzero().squeeze(1)
            if len(rows):
                tail = self._tail(i, h[rows], clusters[rows])
                inner = self._draw(tail.exp())
                token[rows] = inner + self.starts[i + 1]
                score[rows] = tail.gather(1, inner.unsqueeze(1)).squeeze(1)
        return token, score.exp().log()  # fairseq's score: log of the drawn probability

    def _sample_truncated(self, h, words, clusters) -> tuple[torch.Tensor, torch.Tensor]:
        """fairseq's top-k / top-p sampling over the whole vocabulary (every tail computed)."""
        full = torch.cat([words] + [self._tail(i, h, clusters) for i in range(clusters.shape[1])], dim=1)
        if self.cfg.sampling_topp > 0:
            probs, indices = nucleus(full.exp(), self.cfg.sampling_topp)
        else:
            top, indices = full.topk(self.cfg.sampling_topk)
            probs = top.exp()
        # Draw over the kept words in vocabulary order (same distribution as fairseq's best-first order):
        # which word a draw lands on then no longer depends on how near-equal probabilities sort, so
        # cached and uncached decoding, whose log-probs differ in the last bits, draw the same words.
        order = indices.argsort(dim=1)
        probs, indices = probs.gather(1, order), indices.gather(1, order)
        pick = self._draw(probs)
        score = probs.gather(1, pick.unsqueeze(1)).squeeze(1).log()
        return indices.gather(1, pick.unsqueeze(1)).squeeze(1), score


def nucleus(probs: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fairseq's ``Sampling._sample_topp`` over the last dim of ``[..., V]``: the smallest set of best words
    whose mass exceeds ``p``, as ``(probs, indices)`` ``[..., width]`` (words past a row's cut-off get 0).

    The running mass is summed in float64: in float32 its rounding (~1e-6 over ~1e4 near-equal words) moves
    the cut-off by a word between two computations of the same distribution (cached vs uncached decoding,
    TP 2 vs TP 1), and with it the draw.
    """
    sorted_probs, sorted_indices = probs.sort(dim=-1, descending=True)
    mask = sorted_probs.double().cumsum(dim=-1).lt(p)
    last_included = mask.cumsum(dim=-1)[..., -1:].clamp(0, mask.shape[-1] - 1)
    mask = mask.scatter(-1, last_included, True)
    width = int(last_included.max()) + 1
    return sorted_probs[..., :width].masked_fill(~mask[..., :width], 0.0), sorted_indices[..., :width]
