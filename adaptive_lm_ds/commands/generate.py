"""Generate text from a language model, like fairseq's hub ``sample`` (adaptive_lm_ds/inference).

    adaptive-lm-generate --path MODEL --prefix "the game was" [--max-len-b 50]
    adaptive-lm-generate --path model_dir/model.pt --tokenizer moses --prefix "Barack Obama" --beam 5
    adaptive-lm-generate --path MODEL --input prompts.txt --sampling --sampling-topk 10 --temperature 0.8 --seed 1
    torchrun --nproc_per_node 2 -m adaptive_lm_ds adaptive-lm-generate --path MODEL --input prompts.txt \\
        --tensor-model-parallel-size 2

``--path``: a consolidated model folder, a training checkpoint of any layout, or a fairseq ``.pt`` (with
``dict.txt`` beside it, or ``--dictionary``). One prompt per input line, batched (``--batch-size``);
prints one line per prompt: the prompt followed by its continuation (fairseq's ``hub.sample`` output).
Greedy by default; ``--beam N`` is fairseq's beam search (``--lenpen``, ``--no-repeat-ngram-size``);
``--sampling`` draws (reproducibly with ``--seed``). ``--tokenizer moses`` reads raw text and writes
detokenised text, as fairseq's hub with ``tokenizer='moses'``. On the accelerator when there is one.
At TP > 1 launch TP ranks (torchrun or the deepspeed launcher); rank 0 prints, tokens equal TP 1's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.inference import GenerationConfig, GenerationError, LanguageModel
from adaptive_lm_ds.inference.loading import start_layout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = GenerationConfig()
    p = cli.rank_parser(__doc__)
    cli.add_model_source(p)
    p.add_argument("--dictionary", help="dict.txt (default: the model's own, or the one beside a .pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prefix", help="one prompt")
    source.add_argument("--input", help="a file of prompts, one per line")
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    p.add_argument("--tokenizer", choices=("moses",), help="raw text in and out (fairseq's moses tokenizer)")
    p.add_argument("--beam", type=int, default=defaults.beam, help="beam size (1: greedy)")
    p.add_argument("--lenpen", type=float, default=defaults.lenpen, help="hypothesis score / length ** lenpen")
    p.add_argument("--unnormalized", action="store_true", help="score hypotheses by their summed log p")
    p.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size)
    p.add_argument("--max-len-a", type=float, default=defaults.max_len_a, help="output length a * (prompt + 1) + b")
    p.add_argument("--max-len-b", type=int, default=defaults.max_len_b, help="most output tokens, prompt included")
    p.add_argument("--min-len", type=int, default=defaults.min_len, help="no </s> before this many output tokens")
    p.add_argument("--unkpen", type=float, default=defaults.unkpen, help="subtracted from <unk>'s log-probability")
    p.add_argument("--sampling", action="store_true", help="sample instead of greedy search")
    p.add_argument("--sampling-topk", type=int, default=defaults.sampling_topk)
    p.add_argument("--sampling-topp", type=float, default=defaults.sampling_topp)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step (reference)")
    cli.add_layout_arguments(p, pipeline=False)
    cli.add_progress_bar_flag(p)
    return p.parse_args(argv)


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(
        beam=args.beam,
        sampling=args.sampling,
        sampling_topk=args.sampling_topk,
        sampling_topp=args.sampling_topp,
        temperature=args.temperature,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        min_len=args.min_len,
        lenpen=args.lenpen,
        unnormalized=args.unnormalized,
        unkpen=args.unkpen,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        seed=args.seed,
        use_cache=not args.no_cache,
    ).validate()


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prefix is not None:
        return [args.prefix]
    try:
        return Path(args.input).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise GenerationError(f"cannot read --input {args.input}: {err}") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = generation_config(args)
    prompts = read_prompts(args)
    if args.batch_size < 1:
        raise GenerationError(f"--batch-size {args.batch_size} must be >= 1")
    start_layout(args.tensor_model_parallel_size)
    try:
        lm = LanguageModel.load(args.path, dictionary=args.dictionary, tokenizer=args.tokenizer)
        lead = not dist.is_initialized() or dist.get_rank() == 0
        long_input = args.input is not None  # one --prefix needs no bar
        bar = tqdm(
            total=len(prompts),
            unit="prompt",
            disable=not (long_input and cli.shows_progress(args, lead)),
            file=sys.stderr,
        )
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start : start + args.batch_size]
            seed = None if cfg.seed is None else cfg.seed + start  # each batch its own stream
            texts = lm.sample(batch, batch_size=len(batch), config=cfg, seed=seed)
            bar.update(len(batch))
            if lead:
                tqdm.write("\n".join(texts), file=sys.stdout)
        bar.close()
    finally:
        parallel.shutdown()
