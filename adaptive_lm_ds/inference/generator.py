"""The decoding loop of fairseq's ``SequenceGenerator`` for language models (``beam=1``), KV-cached.

(``beam > 1`` or ``no_repeat_ngram_size``: :func:`generate` hands the batch to fairseq's beam loop,
inference/beam_search.py, which scores the whole vocabulary each step.)

Every hypothesis starts with ``</s>`` (fairseq's beginning of sentence for LMs); step ``s`` chooses
output token ``s + 1`` from the hidden state of position ``s``. The prompt's tokens are forced (and
scored) at their steps; ``max_len = min(max_len_b, max_positions - 1)`` output tokens at most, then
``</s>``. A finished row (``</s>`` chosen) leaves the batch and its cache rows are dropped.

With ``use_cache`` the first forward runs over ``</s>`` + the part of the prompts every row shares in
length, and each later step feeds one token per row through :class:`KVCache`; without it every step
recomputes the whole sequence (the reference the cache is checked against). The two paths run the same
model code (the cache is an argument of the attention, not a second model).

Prompts of different lengths: each row's own prompt is forced at its own steps, and ``min_len`` applies
to a row from the first step it chooses freely (fairseq skips the ``min_len`` rule at every step some row
of the batch is still in its prompt; the outputs agree whenever ``min_len`` <= the shortest prompt + 1,
e.g. fairseq's default ``min_len=1`` with non-empty prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_lm_ds.inference.beam_search import beam_search, max_output_len
from adaptive_lm_ds.inference.search import GenerationConfig, Specials, TokenChooser
from adaptive_lm_ds.model.lm import AdaptiveLM


@dataclass
class Hypothesis:
    """fairseq's hypothesis dict: ``tokens`` (prompt + continuation + ``</s>``), their log-probs, and
    ``score``, the summed log-probs over ``len(tokens) ** lenpen`` (fairseq's normalised score)."""

    tokens: torch.Tensor
    positional_scores: torch.Tensor
    prompt_length: int
    score: float

    @property
    def continuation(self) -> torch.Tensor:
        """The generated tokens after the prompt, without the final ``</s>``."""
        return self.tokens[self.prompt_length : -1]


@torch.no_grad()
def generate(
    model: AdaptiveLM, prompts: list[list[int]], cfg: GenerationConfig, specials: Specials
) -> list[Hypothesis]:
    """One batch: the best :class:`Hypothesis` per prompt (token ids without ``</s>``), in prompt order."""
    cfg.validate()
    if cfg.needs_beam_search:
        max_len = max_output_len(cfg, max((len(p) for p in prompts), default=0) + 1, model.cfg.max_positions)
        best = [hypos[0] for hypos in beam_search(model, prompts, cfg, specials)]
        return [_hypothesis(h, min(len(p), max_len)) for p, h in zip(prompts, best)]
    model.eval()
    device = next(model.parameters()).device
    batch, longest = len(prompts), max((len(p) for p in prompts), default=0)
    max_len = max_output_len(cfg, longest + 1, model.cfg.max_positions)
    prefix = torch.full((batch, max(longest, 1)), -1, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prefix[row, : len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
    prefix = prefix.to(device)
    tokens = torch.full((batch, max_len + 2), specials.pad, dtype=torch.long, device=device)
    tokens[:, 0] = specials.eos
    scores = torch.zeros(batch, max_len + 1, dtype=torch.float, device=device)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    chooser = TokenChooser(model.output, cfg, specials, generator)
    cache = model.new_cache() if cfg.use_cache else None

    # the steps where every row is forced: one forward over them (exact target log-probs)
    common = min(min((len(p) for p in prompts), default=0), max_len)
    tokens[:, 1 : common + 1] = prefix[:, :common]
    h = model.hidden_states(tokens[:, : common + 1], cache=cache).div(cfg.temperature)
    if common:
        targets = tokens[:, 1 : common + 1].contiguous()
        lp = model.output.target_log_probs(h[:, :common], targets)
        scores[:, :common] = lp - cfg.unkpen * (targets == specials.unk)
    h_last = h[:, -1]

    rows = torch.arange(batch, device=device)  # original index of each row still decoding
    done: dict[int, Hypothesis] = {}
    for step in range(common, max_len + 1):
        forced = prefix[:, step] if step < min(longest, max_len) else torch.full_like(rows, -1)
        chosen, score = chooser.choose(h_last, step, max_len, forced)
        tokens[:, step + 1], scores[:, step] = chosen, score
        finished = chosen == specials.eos
        for r in finished.nonzero().squeeze(1).tolist():
            original = int(rows[r])
            positional = scores[r, : step + 1].cpu()
            total = float(positional.sum())
            score = total if cfg.unnormalized else total / (step + 1) ** cfg.lenpen
            prompt_length = min(len(prompts[original]), max_len)
            done[original] = Hypothesis(tokens[r, 1 : step + 2].cpu(), positional, prompt_length, score)
        if bool(finished.all()):
            break
        keep = (~finished).nonzero().squeeze(1)
        if len(keep) < len(rows):
            rows, tokens, scores, prefix = rows[keep], tokens[keep], scores[keep], prefix[keep]
            for layer_cache in cache or []:
                layer_cache.select_rows(keep)
        if cache is not None:
            h = model.hidden_states(tokens[:, step + 1 : step + 2], cache=cache)
        else:
            h = model.hidden_states(tokens[:, : step + 2])
        h_last = h[:, -1].div(cfg.temperature)
    return [done[i] for i in range(batch)]


def _hypothesis(hypo: dict, prompt_length: int) -> Hypothesis:
    return Hypothesis(hypo["tokens"].cpu(), hypo["positional"].cpu(), prompt_length, float(hypo["score"]))
