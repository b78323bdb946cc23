"""Write the embedded synthetic corpus (train/valid/test.txt + corpus_stats.json).

    adaptive-lm-synthetic-corpus --out-dir demo_out/corpus [--vocab-size 24000] ...

See adaptive_lm_ds/synthetic_corpus.py for the process and why its perplexity is known exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from adaptive_lm_ds import cli
from adaptive_lm_ds.synthetic_corpus import CorpusSpec, generate_corpus


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(description=__doc__)
    parser.add_argument("--out-dir", required=True, help="folder for train.txt, valid.txt, test.txt")
    for field in dataclasses.fields(CorpusSpec):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(field.default), default=field.default, help=f"(default {field.default})")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    spec = CorpusSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CorpusSpec)})
    start = time.perf_counter()
    stats = generate_corpus(args.out_dir, spec)
    for split, s in stats["splits"].items():
        print(f"{split:>5}: {s['sentences']:>9,} sentences {s['tokens_with_eos']:>11,} tokens (</s> included)")
    print(
        f"true perplexity {stats['true_perplexity']:.2f} (entropy rate {stats['entropy_rate_nats']:.4f} nats), "
        f"unigram perplexity {stats['unigram_perplexity']:.2f}; written to {args.out_dir} "
        f"in {time.perf_counter() - start:.1f}s"
    )
