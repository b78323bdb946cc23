"""The training recipes as data: a name -> the flag defaults of that recipe (fairseq's flag names).

``adaptive-lm-train --recipe NAME`` starts from a recipe's defaults; every flag given on the command line
still wins. ``adaptive-lm-train-wiki103`` / ``adaptive-lm-train-gbw`` (and the checkout's
``launchers/train_wiki103.py`` / ``launchers/train_gbw.py``) are ``--recipe wiki103`` / ``--recipe gbw``
under a name. The ``--recipe`` choices are this table's keys.

Both recipes optimise as the paper does, with fairseq's NAG and cosine schedule: that is
:class:`~adaptive_lm_ds.optim.config.OptimConfig`'s defaults, so a recipe names only what differs (its
model, data shape, schedule period and budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    description: str  # what ``--help`` says about it: where its numbers come from
    defaults: dict[str, Any]  # TrainConfig field -> value, where it differs from the field's default


RECIPES: dict[str, Recipe] = {
    "wiki103": Recipe(
        description="""\
Train on WikiText-103 with the paper's fairseq recipe (Baevski & Auli 2019, `transformer_lm_wiki103`).

    deepspeed [--hostfile hostfile] launchers/train_wiki103.py --data data-bin/wikitext-103 \\
        --deepspeed_config ds_configs/zero1.json [--tensor-model-parallel-size 2] ...

fairseq-train's own command line for this recipe also runs unchanged after the program name
(``launchers/train_wiki103.py --task language_modeling data-bin/wikitext-103 --arch
transformer_lm_wiki103 ... --criterion adaptive_loss ... --ddp-backend=legacy_ddp``; docs/interop.md,
"fairseq-train command lines").

Defaults are fairseq's command: the transformer_lm_wiki103 model (preset wiki103), --criterion
adaptive_loss, NAG, lr 1.0, cosine with --t-mult 2 --lr-period-updates 270000 --lr-shrink 0.75,
warmup 16000 updates from 1e-7, --min-lr 1e-4, --stop-min-lr 1e-9, --clip-norm 0.1,
--max-tokens 3072 --update-freq 3 --tokens-per-sample 3072 --sample-break-mode none, --max-update 286000,
--seed 1. Every flag can be overridden; `--help` lists them all.""",
        defaults=dict(
            preset="wiki103",
            criterion="adaptive_loss",
            t_mult=2.0,
            lr_period_updates=270000,
            max_tokens=3072,
            update_freq=3,
            tokens_per_sample=3072,
            sample_break_mode="none",
            max_update=286000,
        ),
    ),
    "gbw": Recipe(
        description="""\
Train on the One Billion Word benchmark (GBW) with the `gbw_huge` preset (1026M parameters).

    deepspeed --hostfile hostfile launchers/train_gbw.py --data data-bin/gbw \\
        --deepspeed_config ds_configs/zero1_bf16.json --tensor-model-parallel-size 2 ...

fairseq never shipped this recipe. What follows the paper (Baevski & Auli 2019, section 4): the
1026M model shape, sentence-level training (GBW's sentences are shuffled, so no context crosses a
sentence: here sentences are packed into 512-token blocks with block-diagonal attention and
positions restarting per sentence, which equals one sentence per sample without the padding),
Nesterov momentum 0.99, gradient renormalisation at 0.1, a linear warmup from 1e-7 to lr 1 over
16000 updates, then cosine annealing. What is our default, not a number from the paper: the
update budget (--max-update) and one cosine period over all of it (--lr-period-updates -1,
--t-mult 1); set them for your cluster size. Every flag can be overridden; `--help` lists them.""",
        defaults=dict(
            preset="gbw_huge",
            t_mult=1.0,
            lr_period_updates=-1,
            tokens_per_sample=512,
            sample_break_mode="packed",
            max_tokens=4096,
            update_freq=1,
            max_update=1000000,
        ),
    ),
}
