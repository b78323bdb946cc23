#!/usr/bin/env python
"""Train on WikiText-103 with the seed's fairseq recipe (Baevski & Auli 2019, `transformer_lm_wiki103`).

    deepspeed [--hostfile hostfile] launchers/train_wiki103.py --data data-bin/wikitext-103 \\
        --deepspeed_config ds_configs/zero1.json [--tensor-model-parallel-size 2] ...

fairseq-train's own command line for this recipe also runs unchanged after the program name
(``launchers/train_wiki103.py --task language_modeling data-bin/wikitext-103 --arch
transformer_lm_wiki103 ... --criterion adaptive_loss ... --ddp-backend=legacy_ddp``; README).

Defaults are fairseq's command: the transformer_lm_wiki103 model (preset wiki103), --criterion
adaptive_loss, NAG, lr 1.0, cosine with --t-mult 2 --lr-period-updates 270000 --lr-shrink 0.75,
warmup 16000 updates from 1e-7, --min-lr 1e-4, --stop-min-lr 1e-9, --clip-norm 0.1,
--max-tokens 3072 --update-freq 3 --tokens-per-sample 3072 --sample-break-mode none, --max-update 286000,
--seed 1. Every flag can be overridden; `--help` lists them all.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptive_lm_ds.training.entry import main  # noqa: E402

WIKI103_RECIPE = dict(
    preset="wiki103",
    criterion="adaptive_loss",
    optimizer="nag",
    lr=1.0,
    momentum=0.99,
    clip_norm=0.1,
    lr_scheduler="cosine",
    warmup_updates=16000,
    warmup_init_lr=1e-7,
    min_lr=1e-4,
    t_mult=2.0,
    lr_period_updates=270000,
    lr_shrink=0.75,
    stop_min_lr=1e-9,
    max_tokens=3072,
    update_freq=3,
    tokens_per_sample=3072,
    sample_break_mode="none",
    max_update=286000,
    seed=1,
)

if __name__ == "__main__":
    sys.exit(main(description=__doc__, defaults=WIKI103_RECIPE))
