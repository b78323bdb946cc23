"""Evaluate a language model with fairseq-eval-lm's semantics (see adaptive_lm_ds/evaluation.py).

    python tools/eval_lm.py --path MODEL --data DATA_BIN --gen-subset test --tokens-per-sample 512 \\
        --context-window 256 [--sample-break-mode none] [--max-tokens T] [--output-word-probs] [--json FILE]
    torchrun --nproc_per_node 2 tools/eval_lm.py ... --tensor-model-parallel-size 2
    torchrun --nproc_per_node 4 tools/eval_lm.py ... --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2

``--path`` is a consolidated model folder (tools/convert_fairseq_ckpt.py), a training checkpoint of any
TP x PP x DP layout (a save dir or one of its tags, consolidated in memory), or a fairseq ``.pt`` file
(converted in memory). Prints fairseq's closing lines; ``--json`` writes tokens, loss_base2, loss_nats
and perplexity at full precision. Every rank evaluates the same batches (TP shards score without gathering a
band; pipeline stages pass hidden states on and the last stage's log-probs are broadcast); rank 0 reports.
"""

from __future__ import annotations

import argparse
import time

import torch.distributed as dist

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.data import DataError, build_lm_dataset
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.evaluation import EvalResult, eval_block_size, evaluate_lm
from adaptive_lm_ds.inference.loading import build_model, load_model_source, start_layout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.rank_parser(description=__doc__)
    p.add_argument("--path", required=True, help="consolidated model folder or fairseq checkpoint .pt")
    p.add_argument("--data", required=True, help="data-bin folder with dict.txt and SPLIT.{bin,idx}")
    p.add_argument("--gen-subset", default="test")
    p.add_argument("--tokens-per-sample", type=int, help="default: the model's max positions")
    p.add_argument("--context-window", type=int, default=0)
    p.add_argument("--sample-break-mode", default="none", choices=("none", "complete", "eos"))
    p.add_argument("--max-tokens", type=int, default=36000, help="tokens per batch (fairseq's eval-lm default)")
    p.add_argument("--batch-size", type=int, help="at most this many samples per batch")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N samples (a quick check)")
    p.add_argument("--seed", type=int, default=1, help="fairseq's --seed: the order of the float32 sum")
    p.add_argument("--output-word-probs", action="store_true", help="print each token's log-probability (nats)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    return p.parse_args(argv)


def report(result: EvalResult, seconds: float, args: argparse.Namespace) -> None:
    for sample_id, words in result.word_log_probs:
        print(f"{sample_id} " + "\t".join(f"{w} [{lp:.2f}]" for w, lp in words))
    if result.skipped_samples:
        print(f"{result.skipped_samples} samples have invalid sizes and were skipped (longer than max positions)")
    print(result.summary(seconds))
    if args.json:
        atomic_write_json(args.json, result.as_json())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg, state, _ = load_model_source(args.path)
        tokens_per_sample = args.tokens_per_sample or cfg.max_positions
        dataset = build_lm_dataset(
            args.data,
            args.gen_subset,
            eval_block_size(tokens_per_sample, args.context_window),
            args.sample_break_mode,
            drop_oversize=False,
        )
        if len(dataset.dictionary) != cfg.vocab_size:
            raise DataError(f"{args.data}/dict.txt has {len(dataset.dictionary)} types but the model {cfg.vocab_size}")
        start_layout(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        model = build_model(cfg, state, args.pipeline_model_parallel_size)
        start = time.perf_counter()
        result = evaluate_lm(
            model,
            dataset,
            context_window=args.context_window,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            dictionary=dataset.dictionary if args.output_word_probs else None,
            seed=args.seed,
        )
        if not dist.is_initialized() or dist.get_rank() == 0:
            report(result, time.perf_counter() - start, args)
    finally:
        parallel.shutdown()
