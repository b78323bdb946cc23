"""Evaluate a language model with fairseq-eval-lm's semantics and command line (see adaptive_lm_ds/evaluation.py).

    adaptive-lm-eval data-bin/wikitext-103 --path model.pt --sample-break-mode complete --max-tokens 3072 \\
        --context-window 2560 --softmax-batch 1024 [--gen-subset test] [--output-word-probs] [--json FILE]
    adaptive-lm-eval data-bin/wikitext-103 --path model.pt --batch-size 2 --tokens-per-sample 512 --context-window 400
    torchrun --nproc_per_node 4 -m adaptive_lm_ds eval ... \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2

A ``fairseq-eval-lm`` command line runs unchanged: the positional DATA (or ``--data``), ``--path``,
``--task language_modeling``, ``--gen-subset``, ``--tokens-per-sample``, ``--context-window``,
``--sample-break-mode``, ``--max-tokens``, ``--batch-size``/``--max-sentences``, ``--softmax-batch`` (the
output layer over that many positions at a time), ``--output-word-probs`` and ``--output-word-stats``
(fairseq's lines), ``--remove-bpe [MARKER]``, ``--seed``, ``--cpu``, ``--fp16``; logging and loader flags
are taken without effect, and fairseq flags not implemented here stop it in one line
(adaptive_lm_ds/commands/fairseq_compat.py). ``--path`` is a consolidated model folder, a training
checkpoint of any TP x PP x DP layout (a save dir or one of its tags, consolidated in memory), or a
fairseq ``.pt`` (converted in memory). Prints fairseq's lines; ``--json`` writes tokens, loss_base2,
loss_nats and perplexity at full precision. Every rank evaluates the same batches (TP shards score
without gathering a band; pipeline stages pass hidden states on and the last stage's log-probs are
broadcast); rank 0 reports.
"""

from __future__ import annotations

import argparse
import time

import torch.distributed as dist

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.commands.fairseq_compat import accept_without_effect, one_line_errors, refuse
from adaptive_lm_ds.data import DataError, build_lm_dataset
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.evaluation import EvalResult, eval_block_size, evaluate_lm
from adaptive_lm_ds.inference.loading import build_model, load_model_source, start_layout
from adaptive_lm_ds.word_scores import SubwordMerge, WordScores

# fairseq-eval-lm flags not implemented here -> what to do instead
UNSUPPORTED = {
    "--add-bos-token": "models here are trained without a beginning-of-sentence token; drop the flag",
    "--model-overrides": "the model is evaluated as saved; convert or export it with the settings you need",
    "--max-target-positions": "the model's own max positions are used; drop the flag",
    "--distributed-world-size": "launch ranks with torchrun/deepspeed and --tensor-model-parallel-size / "
    "--pipeline-model-parallel-size",
    "--bf16": "evaluation runs in fp32 (or fp16 with --fp16)",
    "--user-dir": "this program has no plug-ins; drop the flag",
    "--results-path": "use --json FILE for the numbers, and redirect stdout for the word lines",
    "--checkpoint-suffix": "pass the checkpoint file itself to --path",
    "--checkpoint-shard-count": "pass a training checkpoint folder to --path (any layout is consolidated)",
}
TAKEN_WITHOUT_EFFECT = (
    ("--skip-invalid-size-inputs-valid-test", "--quiet"),
    (
        "--num-workers",
        "--log-format",
        "--log-interval",
        "--dataset-impl",
        "--data-buffer-size",
        "--tokenizer",
        "--bpe",
        "--required-batch-size-multiple",
    ),  # fmt: skip
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = one_line_errors(cli.rank_parser(__doc__, prog="adaptive-lm-eval"), "see adaptive-lm-eval --help")
    p.add_argument("data_positional", nargs="?", metavar="DATA", help="data-bin folder (fairseq's positional DATA)")
    p.add_argument("--data", help="data-bin folder with dict.txt and SPLIT.{bin,idx} (or the positional DATA)")
    cli.add_model_source(p)
    p.add_argument("--task", default="language_modeling", choices=("language_modeling",))
    p.add_argument("--gen-subset", default="test")
    p.add_argument("--tokens-per-sample", type=int, help="default: the model's max positions")
    p.add_argument("--context-window", type=int, default=0)
    p.add_argument("--sample-break-mode", default="none", choices=("none", "complete", "eos"))
    p.add_argument("--max-tokens", type=int, default=36000, help="tokens per batch (fairseq's eval-lm default)")
    p.add_argument("--batch-size", "--max-sentences", type=int, help="at most this many samples per batch")
    p.add_argument("--softmax-batch", type=int, help="run the output layer over at most N positions at a time")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N samples (a quick check)")
    p.add_argument("--seed", type=int, default=1, help="fairseq's --seed: the order of the float32 sum")
    p.add_argument("--output-word-probs", action="store_true", help="print each word's log-probability (nats)")
    p.add_argument("--output-word-stats", action="store_true", help="print per-word counts and summed log p")
    p.add_argument(
        "--remove-bpe", "--post-process", nargs="?", const="subword_nmt", metavar="MARKER",
        help="merge subword pieces ending in MARKER (default '@@ ', subword-nmt) into words: per-word perplexity",
    )  # fmt: skip
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when there is an accelerator")
    p.add_argument("--fp16", action="store_true", help="run the model in float16 (scores are summed in fp32)")
    p.add_argument("--json", help="write the results here")
    cli.add_layout_arguments(p)
    cli.add_progress_bar_flag(p)
    accept_without_effect(p, *TAKEN_WITHOUT_EFFECT)
    refuse(p, UNSUPPORTED)
    args = p.parse_args(argv)
    if args.data_positional and args.data and args.data_positional != args.data:
        p.error(f"two data dirs given: {args.data_positional} (positional) and --data {args.data}")
    args.data = args.data or args.data_positional
    if not args.data:
        p.error("give the data-bin folder (positional DATA, as fairseq-eval-lm, or --data)")
    if args.remove_bpe is not None and args.remove_bpe not in ("subword_nmt", "@@ "):
        p.error(f"--remove-bpe {args.remove_bpe!r}: only subword-nmt's '@@ ' is implemented, as in fairseq-eval-lm")
    if args.softmax_batch is not None and args.softmax_batch < 1:
        p.error(f"--softmax-batch {args.softmax_batch} must be >= 1")
    return args


def report(result: EvalResult, words: WordScores | None, seconds: float, args: argparse.Namespace) -> None:
    """fairseq-eval-lm's lines, in its order (word probs, the evaluated line, word stats, the loss)."""
    if words is not None and args.output_word_probs:
        print("\n".join(words.prob_lines()))
    if result.skipped_samples:
        print(f"{result.skipped_samples} samples have invalid sizes and were skipped (longer than max positions)")
    print(result.evaluated_line(seconds))
    if words is not None and args.output_word_stats:
        print("\n".join(words.stat_lines()))
    print(result.loss_line())
    if args.json:
        atomic_write_json(args.json, result.as_json())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
    try:
        model = build_model(cfg, state, args.pipeline_model_parallel_size, "cpu" if args.cpu else None)
        if args.fp16:
            model = model.half()
        subwords = SubwordMerge(dataset.dictionary, args.remove_bpe) if args.remove_bpe is not None else None
        wanted = args.output_word_probs or args.output_word_stats
        words = WordScores(dataset.dictionary, subwords) if wanted else None
        start = time.perf_counter()
        result = evaluate_lm(
            model,
            dataset,
            context_window=args.context_window,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            seed=args.seed,
            softmax_batch=args.softmax_batch,
            subwords=subwords,
            words=words,
            progress=cli.shows_progress(args, lead=not dist.is_initialized() or dist.get_rank() == 0),
        )
        if not dist.is_initialized() or dist.get_rank() == 0:
            report(result, words, time.perf_counter() - start, args)
    finally:
        parallel.shutdown()
