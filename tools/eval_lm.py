#!/usr/bin/env python
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
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from adaptive_lm_ds import cli, parallel  # noqa: E402
from adaptive_lm_ds.config import ModelConfig  # noqa: E402
from adaptive_lm_ds.data import DataError, build_lm_dataset  # noqa: E402
from adaptive_lm_ds.data.dictionary import atomic_write_json  # noqa: E402
from adaptive_lm_ds.errors import UserError  # noqa: E402
from adaptive_lm_ds.evaluation import EvalResult, eval_block_size, evaluate_lm  # noqa: E402
from adaptive_lm_ds.formats.consolidated import load_into, tied_names  # noqa: E402
from adaptive_lm_ds.inference.loading import load_model_source  # noqa: E402
from adaptive_lm_ds.model.lm import AdaptiveLM  # noqa: E402
from adaptive_lm_ds.model.pipeline_stage import PipelineStageLM  # noqa: E402


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


def init_layout(tp: int, pp: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != tp * pp:
        raise SystemExit(
            f"error: launched {world} ranks but --tensor-model-parallel-size {tp} x --pipeline-model-parallel-size "
            f"{pp} = {tp * pp}; launch exactly TP x PP ranks"
        )
    if world > 1:
        parallel.init_process_group()
    parallel.initialize_parallel(parallel.Layout(tp=tp, pp=pp))


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], pp: int) -> torch.nn.Module:
    """The one-piece model (TP shard) or this rank's pipeline stage, loaded from consolidated weights,
    on the accelerator's device (``evaluate_lm`` moves each batch there)."""
    if pp == 1:
        model = AdaptiveLM(cfg).eval()
        load_into(model, state)
        return model.to(parallel.accelerator_device())
    model = PipelineStageLM(cfg).eval()
    owners = tied_names(cfg)
    mine = {n for n, _ in model.named_parameters()}
    needed = mine | {owners[n] for n in mine if n in owners}
    load_into(model, {k: v for k, v in state.items() if k in needed})
    return model.to(parallel.accelerator_device())


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
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    init_layout(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
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


if __name__ == "__main__":
    main()
