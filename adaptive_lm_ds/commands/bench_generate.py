"""Decoding speed: KV-cached vs uncached generation, tokens/s (adaptive_lm_ds/inference).

    adaptive-lm-bench-generate [--path MODEL] [--batch 8] [--prompt-len 16] [--new-tokens 112] [--json FILE]

Without ``--path`` a randomly initialised model of the ``wiki103`` shape at d 512 (8 layers, 8 heads,
FFN 2048, vocabulary 50,000 with cutoffs 10000,30000, tied adaptive softmax, max positions 512) is
decoded; with it, that model. ``--batch`` prompts of ``--prompt-len`` random word ids each are decoded
greedily for exactly ``--new-tokens`` tokens (``min_len`` keeps ``</s>`` out), once with the cache and
once without (every step recomputes the whole prefix), interleaved over ``--repeats``; the median is
reported after an untimed warm-up. Tokens/s counts generated tokens (batch x new tokens); the output
says whether both runs gave the same tokens.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.config import wiki103
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.inference import GenerationConfig, generate
from adaptive_lm_ds.inference.loading import build_model, load_model_source
from adaptive_lm_ds.inference.search import Specials
from adaptive_lm_ds.model.lm import AdaptiveLM


def bench_model(path: str | None) -> AdaptiveLM:
    """The model to decode with, on the CPU: ``path``'s (any source), else a random wiki103-shaped d 512 one."""
    if path is None:
        cfg = wiki103(
            vocab_size=50_000, embed_dim=512, ffn_dim=2048, num_layers=8, num_heads=8, max_positions=512,
            adaptive_input_cutoffs=(10_000, 30_000), adaptive_softmax_cutoffs=(10_000, 30_000), dropout=0.0,
        )  # fmt: skip
        return AdaptiveLM(cfg).eval()
    cfg, state, _ = load_model_source(path)
    return build_model(cfg, state, device="cpu")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__)
    cli.add_model_source(
        p, required=False, help="a model (any adaptive-lm-generate takes); default: random wiki103-shaped d 512"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=112)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # a CPU benchmark: gloo, whatever the machine has
    with parallel.single_process():
        model = bench_model(args.path)
        cfg = model.cfg
        total = args.prompt_len + args.new_tokens
        if total >= cfg.max_positions:
            raise UserError(f"prompt + new tokens = {total} must stay below max_positions {cfg.max_positions}")
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randint(4, cfg.vocab_size, (args.batch, args.prompt_len), generator=gen).tolist()
        specials = Specials(pad=1, eos=2, unk=3)
        times: dict[str, list[float]] = {"cached": [], "uncached": []}
        outputs = {}
        for name in times:  # warm-up (first-call allocations, kernel selection), untimed
            generate(
                model,
                prompts[:1],
                GenerationConfig(max_len_b=args.prompt_len + 4, use_cache=name == "cached"),
                specials,
            )
        for _ in range(args.repeats):
            for name in times:
                options = GenerationConfig(max_len_b=total, min_len=total, use_cache=name == "cached")
                start = time.perf_counter()
                outputs[name] = generate(model, prompts, options, specials)
                times[name].append(time.perf_counter() - start)
        same = all(a.tokens.tolist() == b.tokens.tolist() for a, b in zip(outputs["cached"], outputs["uncached"]))
    generated = args.batch * args.new_tokens
    result = {
        "model": args.path or "random wiki103-shaped d512 L8 V50000",
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "same_tokens": same,
    }
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {"median_s": median, "tokens_per_s": generated / median, "runs_s": values}
        print(f"{name:9s} {generated / median:9.1f} tokens/s  (median {median:.2f} s over {args.repeats})")
    result["speedup"] = result["cached"]["tokens_per_s"] / result["uncached"]["tokens_per_s"]
    print(f"speed-up  {result['speedup']:.2f}x   identical tokens: {same}")
    if args.json:
        atomic_write_json(args.json, result)
