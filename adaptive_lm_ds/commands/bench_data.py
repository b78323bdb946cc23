"""Data pipeline benchmark: preprocessing tokens/s, GBW-sized block index build, loader batches/s.

    adaptive-lm-bench-data [--text-tokens 20000000] [--text FILE] [--index-tokens 800000000 \\
        --index-sentences 30000000] [--workdir /tmp/bench_data] [--json FILE]

Needs nothing outside the repo: the text is synthetic (Zipf-distributed words, ~27 per line, like
GBW) unless ``--text`` names a file. The GBW-sized index is a real fairseq ``.idx`` of random
sentence sizes with a sparse ``.bin``; each block-index build runs in a fresh process, which
reports its own wall time and peak RSS (that process imports torch, counted in the RSS).
``--json`` writes the raw numbers, including the two the targets name: ``tokens_per_s_per_worker``
(per worker count) and, per break mode, the index build's ``seconds`` and ``peak_rss_gib``.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from adaptive_lm_ds import cli, host_memory
from adaptive_lm_ds.data.blocks import BREAK_MODES, LMBlockDataset
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.data.indexed import IndexedTokens, write_fairseq_index
from adaptive_lm_ds.data.preprocess import binarize_file, build_dictionary
from adaptive_lm_ds.data.sampler import LMBatchIterator


def synthetic_text(path: Path, tokens: int, vocab: int = 200_000, seed: int = 0) -> None:
    """Zipf(1.1) word ids over ``vocab`` types, lines of 2..52 words."""
    rng = np.random.default_rng(seed)
    words = [f"w{i:x}" for i in range(vocab)]
    with open(path, "w", encoding="utf-8") as f:
        done = 0
        while done < tokens:
            n = min(1_000_000, tokens - done)
            ids = np.minimum(rng.zipf(1.1, n), vocab) - 1
            lens = rng.integers(2, 52, n // 20 + 2)
            ends = set(np.cumsum(lens).tolist())
            f.write("".join(words[w] + ("\n" if k + 1 in ends else " ") for k, w in enumerate(ids.tolist())))
            f.write("\n")
            done += n


def bench_preprocess(text: Path, workdir: Path, record: dict) -> list[str]:
    lines = []
    t0 = time.perf_counter()
    dictionary = build_dictionary([str(text)], workers=2)
    record["dictionary"] = {"types": len(dictionary), "seconds": time.perf_counter() - t0}
    lines.append(f"dictionary (2 workers): {len(dictionary)} types in {record['dictionary']['seconds']:.2f} s")
    for workers in (1, 2):
        s = binarize_file(str(text), dictionary, str(workdir / f"w{workers}"), workers=workers, progress=False)
        record.setdefault("binarize", {})[workers] = {"tokens": s.tokens, "seconds": s.seconds}
        record.setdefault("tokens_per_s_per_worker", {})[workers] = s.tokens / s.seconds / workers
        lines.append(
            f"binarize, {workers} worker(s): {s.tokens:,} tokens in {s.seconds:.2f} s = "
            f"{s.tokens / s.seconds / 1e6:.2f}M tokens/s ({s.tokens / s.seconds / workers / 1e6:.2f}M per worker)"
        )
    return lines


def _build_blocks(prefix: str, mode: str, tokens_per_sample: int, queue) -> None:
    t0 = time.perf_counter()
    data = IndexedTokens(prefix)
    t_open = time.perf_counter() - t0
    ds = LMBlockDataset(data, tokens_per_sample, mode)
    elapsed = time.perf_counter() - t0
    rss = host_memory.peak_rss_bytes() / 2**30
    queue.put((t_open, elapsed, rss, len(ds)))


def bench_index(workdir: Path, tokens: int, sentences: int, tokens_per_sample: int, record: dict) -> list[str]:
    rng = np.random.default_rng(0)
    mean = tokens / sentences
    sizes = rng.integers(2, int(2 * mean) - 1, sentences, dtype=np.int32)
    diff = tokens - int(sizes.sum())
    sizes[: abs(diff)] += np.sign(diff).astype(np.int32)
    prefix = workdir / "gbw_like"
    write_fairseq_index(f"{prefix}.idx", sizes, np.uint32)
    with open(f"{prefix}.bin", "wb") as f:
        f.truncate(tokens * 4)  # sparse: the index build never reads tokens
    lines = [f"synthetic index: {int(sizes.sum()):,} tokens, {len(sizes):,} sentences, uint32"]
    ctx = mp.get_context("spawn")
    for mode in BREAK_MODES:
        queue = ctx.Queue()
        proc = ctx.Process(target=_build_blocks, args=(str(prefix), mode, tokens_per_sample, queue))
        proc.start()
        t_open, elapsed, rss, n = queue.get()
        proc.join()
        entry = {"blocks": n, "open_seconds": t_open, "seconds": elapsed, "peak_rss_gib": rss}
        record.setdefault("index", {})[mode] = entry
        lines.append(
            f"blocks {mode:>8} (tokens_per_sample {tokens_per_sample}): {n:,} blocks, open+validate "
            f"{t_open:.2f} s, total {elapsed:.2f} s, peak RSS {rss:.2f} GiB"
        )
    return lines


def bench_loader(
    prefix: Path, batch_size: int, tokens_per_sample: int, record: dict, seconds: float = 3.0
) -> list[str]:
    lines = []
    for mode in ("none", "packed"):
        ds = LMBlockDataset(IndexedTokens(prefix), tokens_per_sample, mode)
        it = LMBatchIterator(ds, batch_size=batch_size, dp_rank=0, dp_size=1, seed=1)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in it:
                n += 1
                if time.perf_counter() - t0 >= seconds:
                    break
        rate = n / (time.perf_counter() - t0)
        record.setdefault("loader_batches_per_s", {})[mode] = rate
        lines.append(
            f"loader {mode:>6}: batch {batch_size}x{tokens_per_sample}, shuffled: {rate:,.0f} batches/s "
            f"({rate * batch_size * tokens_per_sample / 1e6:.1f}M tokens/s)"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(description=__doc__)
    p.add_argument("--text", help="benchmark preprocessing on this file instead of synthetic text")
    p.add_argument("--text-tokens", type=int, default=20_000_000)
    p.add_argument("--index-tokens", type=int, default=800_000_000)
    p.add_argument("--index-sentences", type=int, default=30_000_000)
    p.add_argument("--tokens-per-sample", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workdir", help="scratch folder (default: a temp folder, removed afterwards)")
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        text = Path(args.text) if args.text else workdir / "synthetic.txt"
        if not args.text:
            synthetic_text(text, args.text_tokens)
        record: dict = {"text_mib": text.stat().st_size / 2**20}
        report = [f"text: {text} ({record['text_mib']:.0f} MiB)"]
        report += bench_preprocess(text, workdir, record)
        report += bench_loader(workdir / "w1", args.batch_size, args.tokens_per_sample, record)
        report += bench_index(workdir, args.index_tokens, args.index_sentences, args.tokens_per_sample, record)
        print("\n".join(report))
        if args.json:
            atomic_write_json(args.json, record)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
