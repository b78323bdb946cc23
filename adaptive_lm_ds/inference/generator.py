"""The decoding loop of fairseq's ``SequenceGenerator`` for language models (``beam=1``), KV-cached.

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

from adaptive_lm_ds.inference.search import GenerationConfig, GenerationError, Specials, TokenChooser
from adaptive_lm_ds.model.lm import AdaptiveLM


@dataclass
class Hypothesis:
    """fairseq's hypothesis dict: ``tokens`` (prompt + continuation + ``</s>``) and their log-probs."""

    tokens: torch.Tensor
    positional_scores: torch.Tensor
    prompt_length: int

    @property
    def score(self) -> float:
        """fairseq's length-normalised score: the mean positional score."""
        return float(self.positional_scores.sum() / len(self.positional_scores))

    @property
    def continuation(self) -> torch.Tensor:
        """The generated tokens after the prompt, without the final ``</s>``."""
        return self.tokens[self.prompt_length : -1]


def max_output_len(cfg: GenerationConfig, max_positions: int) -> int:
    max_len = min(cfg.max_len_b, max_positions - 1)
    if cfg.min_len > max_len:
        raise GenerationError(
            f"min_len={cfg.min_len} is larger than the longest output {max_len} "
            f"(min(max_len_b, max_positions - 1)); lower min_len"
        )
    return max_len


@torch.no_grad()
def generate(
    model: AdaptiveLM, prompts: list[list[int]], cfg: GenerationConfig, specials: Specials
) -> list[Hypothesis]:
    """One batch: a :class:`Hypothesis` per prompt (token ids without ``</s>``), in prompt order."""
    cfg.validate()
    model.eval()
    device = next(model.parameters()).device
    max_len = max_output_len(cfg, model.cfg.max_positions)
    batch, longest = len(prompts), max((len(p) for p in prompts), default=0)
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
            done[original] = Hypothesis(
                tokens[r, 1 : step + 2].cpu(), scores[r, : step + 1].cpu(), min(len(prompts[original]), max_len)
            )
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
