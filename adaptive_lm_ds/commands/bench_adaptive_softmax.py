"""Output and input layers at the GBW vocabulary: full softmax/embedding vs torch's and our adaptive layers.

    adaptive-lm-bench-softmax [--d 512] [--tokens 256] [--repeats 7] [--json FILE]
    adaptive-lm-bench-softmax --d 1536 --tokens 4096 --device cuda --dtype bf16   # on a GPU

Output side, forward + backward per token of ``h [N, d] -> loss``: (a) full softmax (linear to 793,475
logits + cross-entropy), (b) ``torch.nn.AdaptiveLogSoftmaxWithLoss`` (cutoffs 60000, 160000, div 4),
(c) ours (``VocabParallelAdaptiveSoftmax`` at TP = 1, the ``gbw_huge`` bands). Input side, lookup +
backward + optimizer step: a full ``[V, d]`` embedding with a dense gradient (NAG, the project's
optimizer, updates every row), the same with a sparse gradient (SGD, only looked-up rows), and our
adaptive input (NAG, dense). Targets and inputs are Zipf-distributed word ids (fairseq's dictionary
ranks words by count) with the exponent fitted to ``../shared/data/wikitext-2`` unigram counts, or
the documented default exponent 1.0 when that corpus is absent (the output says which). The
implementations run interleaved, one step each per repeat, so machine noise hits all alike; the
median per repeat is reported.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adaptive_lm_ds import (
    cli,
    parallel,
)
from adaptive_lm_ds.config import gbw_huge
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.flops import DEFAULT_ZIPF_EXPONENT, NUM_SPECIALS, fit_zipf_exponent
from adaptive_lm_ds.layers import VocabParallelAdaptiveInput, VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.optim.optimizers import NAG

GBW_VOCAB = 793_475
WIKITEXT2 = "../shared/data/wikitext-2"  # beside the checkout, as CI lays it out


def zipf_exponent(corpus_dir: Path) -> tuple[float, str]:
    """Exponent fitted to the corpus's unigram counts (line end = ``</s>``), or the default."""
    files = sorted(corpus_dir.glob("*.txt")) if corpus_dir.is_dir() else []
    if not files:
        return DEFAULT_ZIPF_EXPONENT, f"default {DEFAULT_ZIPF_EXPONENT} ({corpus_dir} absent)"
    counts: Counter[str] = Counter()
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            counts.update(line.split())
            counts["</s>"] += 1
    exponent = fit_zipf_exponent(list(counts.values()))
    return exponent, f"fitted to {corpus_dir} ({len(counts):,} types, {sum(counts.values()):,} tokens)"


def zipf_ids(n: int, vocab: int, exponent: float, seed: int) -> torch.Tensor:
    """``n`` word ids ``>= NUM_SPECIALS``; id ``r + 3`` has probability ``~ r**-exponent``."""
    ranks = np.arange(1, vocab - NUM_SPECIALS + 1, dtype=np.float64)
    probs = ranks**-exponent
    ids = np.random.default_rng(seed).choice(ranks.size, size=n, p=probs / probs.sum()) + NUM_SPECIALS
    return torch.from_numpy(ids)


def output_cases(d: int, device, dtype) -> dict:
    """name -> ``loss(h, targets)`` closures over freshly built layers."""
    cfg = gbw_huge(embed_dim=d, dropout=0.0)
    cutoffs = list(cfg.adaptive_softmax_cutoffs)
    full = nn.Linear(d, GBW_VOCAB, bias=False).to(device, dtype)
    torch_adaptive = nn.AdaptiveLogSoftmaxWithLoss(d, GBW_VOCAB, cutoffs, div_value=4.0).to(device, dtype)
    ours = VocabParallelAdaptiveSoftmax(cfg, parallel.tensor_parallel_group()).to(device, dtype)
    return {
        "full_softmax": lambda h, t: F.cross_entropy(full(h).float(), t, reduction="sum"),
        "torch_adaptive": lambda h, t: -torch_adaptive(h, t).output.float().sum(),
        "ours": lambda h, t: ours.loss(h, t)[0],
    }


def input_cases(d: int, device, dtype) -> dict:
    """name -> ``step(ids)`` closures: lookup, backward of a sum, optimizer step."""
    cfg = gbw_huge(embed_dim=d, dropout=0.0)
    dense = nn.Embedding(GBW_VOCAB, d).to(device, dtype)
    sparse = nn.Embedding(GBW_VOCAB, d, sparse=True).to(device, dtype)
    ours = VocabParallelAdaptiveInput(cfg, parallel.tensor_parallel_group()).to(device, dtype)
    optimizers = {
        "full_embedding_dense": (dense, NAG(dense.parameters(), lr=0.1, momentum=0.99)),
        "full_embedding_sparse": (sparse, torch.optim.SGD(sparse.parameters(), lr=0.1)),
        "ours": (ours, NAG(ours.parameters(), lr=0.1, momentum=0.99)),
    }

    def step(module, optimizer):
        def run(ids):
            module(ids).float().sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    return {name: step(*pair) for name, pair in optimizers.items()}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(cases: dict, make_args, repeats: int, warmup: int, device) -> dict[str, list[float]]:
    """Seconds per step of each case; each repeat runs every case once, in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(warmup + repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            args = make_args()
            sync(device)
            start = time.perf_counter()
            cases[name](*args)
            sync(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per step (full logits: tokens x 793k fp32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--zipf-corpus", default=WIKITEXT2, help="fit the Zipf exponent to this folder's *.txt")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    exponent, source = zipf_exponent(Path(args.zipf_corpus))
    print(f"GBW vocabulary {GBW_VOCAB:,}, d {args.d}, {args.tokens} tokens/step, {args.device} {args.dtype}")
    print(f"Zipf exponent {exponent:.3f}: {source}; threads {torch.get_num_threads()}")
    seeds = iter(range(10**6))
    targets = lambda: zipf_ids(args.tokens, GBW_VOCAB, exponent, next(seeds)).to(device)  # noqa: E731

    with parallel.single_process():
        out_cases = {}
        for name, loss_fn in output_cases(args.d, device, dtype).items():
            out_cases[name] = lambda h, t, loss_fn=loss_fn: loss_fn(h, t).backward()
        make_h = lambda: (torch.randn(args.tokens, args.d, device=device, dtype=dtype, requires_grad=True), targets())  # noqa: E731
        out_times = time_interleaved(out_cases, make_h, args.repeats, args.warmup, device)
        in_times = time_interleaved(
            input_cases(args.d, device, dtype), lambda: (targets(),), args.repeats, args.warmup, device
        )

    result = {"d": args.d, "tokens": args.tokens, "device": args.device, "dtype": args.dtype}
    result |= {
        "zipf_exponent": exponent,
        "zipf_source": source,
        "raw_seconds": {"output": out_times, "input": in_times},
    }
    med = {
        side: {k: statistics.median(v) for k, v in t.items()}
        for side, t in (("output", out_times), ("input", in_times))
    }
    result["median_us_per_token"] = {s: {k: v / args.tokens * 1e6 for k, v in m.items()} for s, m in med.items()}
    result["speedup_vs_full_softmax"] = med["output"]["full_softmax"] / med["output"]["ours"]
    result["speedup_vs_torch_adaptive"] = med["output"]["torch_adaptive"] / med["output"]["ours"]
    result["input_speedup_vs_full_embedding_dense"] = med["input"]["full_embedding_dense"] / med["input"]["ours"]
    result["input_speedup_vs_full_embedding_sparse"] = med["input"]["full_embedding_sparse"] / med["input"]["ours"]
    print(f"\n{'side':<8}{'implementation':<24}{'median us/token':>16}{'min':>10}{'max':>10}")
    for side, times in (("output", out_times), ("input", in_times)):
        for name, ts in times.items():
            per = [t / args.tokens * 1e6 for t in ts]
            print(f"{side:<8}{name:<24}{statistics.median(per):>16.2f}{min(per):>10.2f}{max(per):>10.2f}")
    print()
    for key in [k for k in result if "speedup" in k]:
        print(f"{key}: {result[key]:.2f}x")
    if args.json:
        atomic_write_json(args.json, result)
    return 0
