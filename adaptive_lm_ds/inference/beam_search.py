"""fairseq's ``SequenceGenerator`` beam search for language models, step for step, KV-cached and batched.

The loop of ``SequenceGenerator._generate`` with its ``BeamSearch`` (or, with ``sampling``, its
``Sampling``) strategy, over ``bsz x beam`` rows:

* each step scores the whole vocabulary (``[bsz * beam, V]`` fp32 log p; under tensor parallelism the
  band shards are all-gathered, so every rank holds the same numbers and makes the same choices);
  ``<pad>`` is never chosen, ``unkpen`` is subtracted from ``<unk>``, ``</s>`` is forbidden before
  ``min_len`` (on steps where no row is still in its prompt, as fairseq) and forced at ``max_len =
  min(max_len_a * (longest prompt + 1) + max_len_b, max_positions - 1)``;
* a prompt is forced token by token as fairseq's prefix tokens (so all beams of a sentence follow the
  first one until the prompt ends); ``no_repeat_ngram_size`` bans every token that would repeat an
  n-gram of the hypothesis (fairseq's CUDA kernel's rule; the pure-Python fallback of the fairseq
  commit this project tests against bans nothing, see docs/interop.md);
* candidates are the ``2 x beam`` best cumulative scores; one that ends in ``</s>`` is finalized with
  score ``cumulative / (step + 1) ** lenpen`` (``unnormalized``: the cumulative score); a sentence is
  done when ``beam`` hypotheses are finalized, and leaves the batch (its cache rows too).

Hypotheses come back best first, per prompt, with fairseq's per-position scores (differences of the
cumulative fp32 scores). The cache follows every beam reordering (:meth:`KVCache.select_rows`).
"""

from __future__ import annotations

import math

import torch

from adaptive_lm_ds.inference.search import GenerationConfig, GenerationError, Specials, nucleus
from adaptive_lm_ds.model.lm import AdaptiveLM


def max_output_len(cfg: GenerationConfig, src_len: int, max_positions: int) -> int:
    """fairseq's ``max_len``: ``min(max_len_a * src_len + max_len_b, max_positions - 1)``."""
    max_len = min(int(cfg.max_len_a * src_len + cfg.max_len_b), max_positions - 1)
    if cfg.min_len > max_len:
        raise GenerationError(
            f"min_len={cfg.min_len} is larger than the longest output {max_len} "
            f"(min(max_len_a * src_len + max_len_b, max_positions - 1)); lower min_len"
        )
    return max_len


def ban_repeated_ngrams(tokens: torch.Tensor, lprobs: torch.Tensor, step: int, n: int) -> None:
    """In place: ``-inf`` for each token that would complete an n-gram already in the row (``tokens[:, :step+1]``)."""
    first_windows = step - n + 2
    if first_windows <= 0:
        return
    rows = tokens[:, : step + 1].tolist()
    for r, row in enumerate(rows):
        last = row[first_windows:]
        banned = [row[i + n - 1] for i in range(first_windows) if row[i : i + n - 1] == last]
        if banned:
            lprobs[r, banned] = -math.inf


class _Finalized:
    """fairseq's ``finalize_hypos`` bookkeeping: finished hypotheses per original sentence."""

    def __init__(self, bsz: int, beam: int, cfg: GenerationConfig, eos: int):
        self.hypos: list[list[dict]] = [[] for _ in range(bsz)]
        self.finished = [False] * bsz
        self.beam, self.cfg, self.eos = beam, cfg, eos

    def add(self, step, bbsz_idx, eos_scores, tokens, scores, max_len) -> list[int]:
        """Finalize rows ``bbsz_idx`` ending in ``</s>``; returns the (current-batch) sentences now done."""
        tokens_clone = tokens.index_select(0, bbsz_idx)[:, 1 : step + 2]
        tokens_clone[:, step] = self.eos
        pos_scores = scores.index_select(0, bbsz_idx)[:, : step + 1]
        pos_scores[:, step] = eos_scores
        pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
        if not self.cfg.unnormalized:
            eos_scores = eos_scores / (step + 1) ** self.cfg.lenpen
        cum_unfin, prev = [], 0
        for f in self.finished:
            if f:
                prev += 1
            else:
                cum_unfin.append(prev)
        unfin_idx = torch.div(bbsz_idx, self.beam, rounding_mode="trunc")
        sent = unfin_idx + torch.tensor(cum_unfin, dtype=torch.long, device=bbsz_idx.device)[unfin_idx]
        sent_list = sent.tolist()
        for i, s in enumerate(sent_list):
            if len(self.hypos[s]) < self.beam:
                self.hypos[s].append({"tokens": tokens_clone[i], "score": eos_scores[i], "positional": pos_scores[i]})
        newly = []
        for s, u in sorted(set(zip(sent_list, unfin_idx.tolist()))):
            if not self.finished[s] and (len(self.hypos[s]) == self.beam or step == max_len):
                self.finished[s] = True
                newly.append(u)
        return newly


class _Search:
    """fairseq's ``BeamSearch.step`` / ``Sampling.step``: candidates ``(scores, tokens, beams)`` ``[bsz, C]``."""

    def __init__(self, cfg: GenerationConfig, generator: torch.Generator | None):
        self.cfg, self.generator = cfg, generator

    def step(self, step: int, lprobs: torch.Tensor, scores: torch.Tensor):
        bsz, beam, vocab = lprobs.shape
        if self.cfg.sampling:
            return self._sample(step, lprobs, scores)
        if step == 0:
            lprobs = lprobs[:, ::beam, :].contiguous()
        else:
            lprobs = lprobs + scores[:, :, step - 1].unsqueeze(-1)
        flat = lprobs.view(bsz, -1)
        values, indices = torch.topk(flat, k=min(2 * beam, flat.size(1) - 1))
        return values, indices.fmod(vocab), torch.div(indices, vocab, rounding_mode="trunc")

    def _sample(self, step: int, lprobs: torch.Tensor, scores: torch.Tensor):
        bsz, beam, _ = lprobs.shape
        cfg = self.cfg
        if step == 0:
            lprobs = lprobs[:, ::beam, :].contiguous()
        top_indices = None
        if cfg.sampling_topp > 0:
            probs, top_indices = nucleus(lprobs.exp(), cfg.sampling_topp)
        elif cfg.sampling_topk > 0:
            lprobs, top_indices = lprobs.topk(cfg.sampling_topk)
            probs = lprobs.exp()
        else:
            probs = lprobs.exp()
        rows, draws = (bsz, beam) if step == 0 else (bsz * beam, 1)
        picks = torch.multinomial(probs.view(rows, -1), draws, replacement=True, generator=self.generator)
        picks = picks.view(bsz, beam)
        if step == 0:
            probs = probs.expand(bsz, beam, -1)
        cand_scores = torch.gather(probs, 2, picks.unsqueeze(-1)).log().view(bsz, -1)
        if top_indices is not None:
            picks = torch.gather(top_indices.expand(bsz, beam, -1), 2, picks.unsqueeze(-1)).squeeze(2)
        if step == 0:
            beams = picks.new_zeros(bsz, beam)
        else:
            beams = torch.arange(beam, device=picks.device).repeat(bsz, 1)
            cand_scores = cand_scores + torch.gather(scores[:, :, step - 1], 1, beams)
        return cand_scores, picks, beams


class _StepScorer:
    """The model's next-token log p ``[rows, V]`` for ``tokens[:, :step + 1]``, with or without a cache."""

    def __init__(self, model: AdaptiveLM, cfg: GenerationConfig):
        self.model, self.temperature = model, cfg.temperature
        self.cache = model.new_cache() if cfg.use_cache else None

    def reorder(self, rows: torch.Tensor) -> None:
        for layer_cache in self.cache or []:
            layer_cache.select_rows(rows)

    def __call__(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        if self.cache is not None:
            h = self.model.hidden_states(tokens[:, step : step + 1], cache=self.cache)
        else:
            h = self.model.hidden_states(tokens[:, : step + 1])
        h = h[:, -1].div(self.temperature)
        return self.model.output.gather_log_probs(self.model.output.log_probs(h)).float()


@torch.no_grad()
def beam_search(model: AdaptiveLM, prompts: list[list[int]], cfg: GenerationConfig, sp: Specials) -> list[list[dict]]:
    """Per prompt (ids without ``</s>``) its finalized hypotheses, best first: ``{"tokens", "score",
    "positional"}`` with ``tokens`` the prompt, the continuation and ``</s>`` (fairseq's hypothesis dicts)."""
    model.eval()
    device = next(model.parameters()).device
    vocab = model.cfg.vocab_size
    beam = min(cfg.beam, vocab - 1)
    bsz, longest = len(prompts), max((len(p) for p in prompts), default=0)
    max_len = max_output_len(cfg, longest + 1, model.cfg.max_positions)
    prefix = torch.full((bsz, longest), sp.pad, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prefix[row, : len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
    prefix = prefix.to(device)
    scores = torch.zeros(bsz * beam, max_len + 1, device=device)
    tokens = torch.full((bsz * beam, max_len + 2), sp.pad, dtype=torch.long, device=device)
    tokens[:, 0] = sp.eos
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    search, scorer = _Search(cfg, generator), _StepScorer(model, cfg)
    done = _Finalized(bsz, beam, cfg, sp.eos)
    cands_to_ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)
    bbsz_offsets = (torch.arange(bsz, device=device) * beam).unsqueeze(1)
    remaining, reorder_state, batch_idxs = bsz, None, None
    for step in range(max_len + 1):
        if reorder_state is not None:
            if batch_idxs is not None:
                corr = batch_idxs - torch.arange(batch_idxs.numel(), device=device)
                reorder_state.view(-1, beam).add_(corr.unsqueeze(-1) * beam)
            scorer.reorder(reorder_state)
        lprobs = scorer(tokens, step)
        lprobs[lprobs != lprobs] = -math.inf
        lprobs[:, sp.pad] = -math.inf
        lprobs[:, sp.unk] -= cfg.unkpen
        if step >= max_len:
            lprobs[:, : sp.eos] = -math.inf
            lprobs[:, sp.eos + 1 :] = -math.inf
        if step < prefix.size(1) and step < max_len:
            forced = prefix[:, step].repeat_interleave(beam)
            forced_lprobs = lprobs.gather(1, forced.unsqueeze(1))
            mask = forced != sp.pad
            lprobs[mask] = -math.inf
            lprobs[mask] = lprobs[mask].scatter(1, forced[mask].unsqueeze(1), forced_lprobs[mask])
        elif step < cfg.min_len:
            lprobs[:, sp.eos] = -math.inf
        if cfg.no_repeat_ngram_size > 0:
            ban_repeated_ngrams(tokens, lprobs, step, cfg.no_repeat_ngram_size)
        cand_scores, cand_indices, cand_beams = search.step(
            step, lprobs.view(bsz, -1, vocab), scores.view(bsz, beam, -1)[:, :, :step]
        )
        cand_size = cand_scores.size(1)
        cand_bbsz_idx = cand_beams + bbsz_offsets
        eos_mask = cand_indices.eq(sp.eos) & cand_scores.ne(-math.inf)
        eos_mask[:, :beam][cands_to_ignore] = False
        eos_bbsz_idx = torch.masked_select(cand_bbsz_idx[:, :beam], mask=eos_mask[:, :beam])
        finalized_sents: list[int] = []
        if eos_bbsz_idx.numel() > 0:
            eos_scores = torch.masked_select(cand_scores[:, :beam], mask=eos_mask[:, :beam])
            finalized_sents = done.add(step, eos_bbsz_idx, eos_scores, tokens, scores, max_len)
            remaining -= len(finalized_sents)
        if remaining == 0:
            break
        if finalized_sents:
            new_bsz = bsz - len(finalized_sents)
            batch_mask = torch.ones(bsz, dtype=torch.bool, device=device)
            batch_mask[finalized_sents] = False
            batch_idxs = torch.arange(bsz, device=device).masked_select(batch_mask)
            eos_mask, cand_beams = eos_mask[batch_idxs], cand_beams[batch_idxs]
            bbsz_offsets = bbsz_offsets[:new_bsz]
            cand_bbsz_idx = cand_beams + bbsz_offsets
            cand_scores, cand_indices = cand_scores[batch_idxs], cand_indices[batch_idxs]
            prefix, cands_to_ignore = prefix[batch_idxs], cands_to_ignore[batch_idxs]
            scores = scores.view(bsz, -1)[batch_idxs].view(new_bsz * beam, -1)
            tokens = tokens.view(bsz, -1)[batch_idxs].view(new_bsz * beam, -1)
            bsz = new_bsz
        else:
            batch_idxs = None
        eos_mask[:, :beam] = ~((~cands_to_ignore) & (~eos_mask[:, :beam]))
        active_mask = eos_mask.long() * cand_size + torch.arange(cand_size, device=device)
        new_cands_to_ignore, active_hypos = torch.topk(active_mask, k=beam, dim=1, largest=False)
        cands_to_ignore = new_cands_to_ignore.ge(cand_size)[:, :beam]
        active_bbsz_idx = torch.gather(cand_bbsz_idx, 1, active_hypos).view(-1)
        tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, active_bbsz_idx)
        tokens.view(bsz, beam, -1)[:, :, step + 1] = torch.gather(cand_indices, 1, active_hypos)
        if step > 0:
            scores[:, :step] = scores[:, :step].index_select(0, active_bbsz_idx)
        scores.view(bsz, beam, -1)[:, :, step] = torch.gather(cand_scores, 1, active_hypos)
        reorder_state = active_bbsz_idx
    out = []
    for hypos in done.hypos:
        order = torch.sort(torch.tensor([float(h["score"]) for h in hypos]), descending=True)[1]
        out.append([hypos[i] for i in order.tolist()])
    return out
