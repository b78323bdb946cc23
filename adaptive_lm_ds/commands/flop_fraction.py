"""How close the product's update comes to this machine's fp32 matmul rate, part by part.

``adaptive-lm-bench-vs-fairseq --flop-fraction`` (no oracle needed). The model, data and recipe are the
benchmark's fairseq command line (:func:`~adaptive_lm_ds.commands.bench_vs_fairseq.fairseq_command_line`),
binarised here with fixture A's dictionary. Three measurements, each the median of ``repeats``:

* the **matmul rate**: ``torch.mm`` at the model's linear GEMM shapes in the three orientations a
  linear's forward and backward use (``X W^T``, ``G W``, ``G^T X``; ``N`` = tokens per micro batch), FLOP-
  weighted over the shapes;
* the **update**: ``Stepper.train_step`` of the trainer that command line builds (forward, backward,
  clipping, NAG, the engine's bookkeeping), on the loader's batches;
* its **parts**, each timed alone on a real micro batch in training mode (dropout on), forward + backward:
  the adaptive input, the transformer blocks (attention included), the adaptive softmax's loss; and the
  optimizer step (gradient norm, clipping, NAG, zeroing) after a backward. ``overhead`` is the update
  less the parts (the engine's hooks and loss scaling, the loss sum, Python).

FLOPs are :mod:`adaptive_lm_ds.flops`'s frequency-weighted adaptive counts (matrix products only; the
optimizer's element-wise work counts 0). A part's fraction is its FLOP/s over the matmul rate.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.flops import run_flops_per_token


def prepare_data_without_oracle(shared: Path, work: Path, valid_lines: int) -> Path:
    """WikiText-2 valid.txt (train) and test.txt's first lines (valid) binarised with fixture A's dictionary."""
    from adaptive_lm_ds.data import Dictionary
    from adaptive_lm_ds.data.preprocess import binarize_file

    data_bin = work / "data-bin-ours"
    if (data_bin / "train.bin").exists():
        return data_bin
    data_bin.mkdir(parents=True, exist_ok=True)
    dictionary = Dictionary.load(shared / "fixtures" / "fairseq-wiki103-tiny" / "dict.txt")
    dictionary.save(data_bin / "dict.txt")
    lines = (shared / "data" / "wikitext-2" / "test.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (work / "valid.txt").write_text("".join(lines[:valid_lines]), encoding="utf-8")
    binarize_file(
        str(shared / "data" / "wikitext-2" / "valid.txt"), dictionary, str(data_bin / "train"), progress=False
    )
    binarize_file(str(work / "valid.txt"), dictionary, str(data_bin / "valid"), progress=False)
    return data_bin


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(tokens: int, d: int, ffn: int, repeats: int) -> tuple[float, list[str]]:
    """FLOP-weighted fp32 ``torch.mm`` rate (FLOP/s) over the blocks' linear GEMMs, and a line per shape."""
    total_flops, total_seconds, lines = 0.0, 0.0, []
    for d_in, d_out, count in ((d, d, 4), (d, ffn, 1), (ffn, d, 1)):  # q, k, v, out_proj; fc1; fc2
        x, w, g = torch.randn(tokens, d_in), torch.randn(d_out, d_in), torch.randn(tokens, d_out)
        products = (("X W^T", x, w.t()), ("G W", g, w), ("G^T X", g.t(), x))
        for name, a, b in products:
            seconds = _median_seconds(lambda a=a, b=b: a @ b, repeats)
            flops = 2.0 * tokens * d_in * d_out
            total_flops += count * flops
            total_seconds += count * seconds
            lines.append(f"  mm [{tokens}x{d_in}] . [{d_in}x{d_out}] {name:>6}: {flops / seconds / 1e9:6.1f} GFLOP/s")
    return total_flops / total_seconds, lines


def measure(trainer, repeats: int) -> dict:
    """Seconds per update and per part, FLOPs per update and per part (module docstring)."""
    engine, module = trainer.engine, trainer.engine.module
    gas = trainer.cfg.data.update_freq
    stream = iter(trainer.batches)
    batches = [next(stream) for _ in range(gas)]
    update = _median_seconds(lambda: trainer.stepper.train_step(batches), repeats)
    batch = batches[0]
    tokens, targets = batch["tokens"], batch["targets"]
    engine.train()

    def adaptive_input():
        module.embed(tokens).sum().backward()

    x0 = module.embed(tokens).detach()

    def blocks():
        h = x0.requires_grad_()
        for layer in module.layers:
            h = layer(h, None)
        h.sum().backward()

    h_final = module.hidden_states(tokens).detach()

    def adaptive_softmax():
        loss, _ = module.output.loss(h_final.requires_grad_(), targets)
        loss.backward()

    def optimizer_after_backward() -> float:
        blocks()  # fresh gradients (untimed): the step zeroes them
        start = time.perf_counter()
        engine._take_model_step(None)
        return time.perf_counter() - start

    parts = {
        "adaptive input": _median_seconds(adaptive_input, repeats) * gas,
        "blocks": _median_seconds(blocks, repeats) * gas,
        "adaptive softmax": _median_seconds(adaptive_softmax, repeats) * gas,
        "optimizer": statistics.median(optimizer_after_backward() for _ in range(repeats)),
    }
    parts["overhead"] = update - sum(parts.values())
    per_token = run_flops_per_token(trainer.model_cfg, trainer.dictionary, trainer.train_data)
    ntokens = sum(int((b["targets"] != trainer.model_cfg.padding_idx).sum()) for b in batches)
    flops = {
        "adaptive input": 2 * per_token.input_proj * ntokens,
        "blocks": 3 * (per_token.blocks + per_token.attention) * ntokens,
        "adaptive softmax": 3 * per_token.output * ntokens,
        "optimizer": 0.0,
        "overhead": 0.0,
    }
    return {"update_s": update, "update_flops": per_token.training * ntokens, "ntokens": ntokens,
            "parts_s": parts, "parts_flops": flops}  # fmt: skip


def report(result: dict, rate: float) -> list[str]:
    update, total = result["update_s"], result["update_flops"]
    lines = [
        f"{'part':<18} {'ms/update':>10} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'of mm rate':>10}",
    ]
    for name, seconds in result["parts_s"].items():
        flops = result["parts_flops"][name]
        achieved = flops / seconds if seconds > 0 and flops else 0.0
        lines.append(
            f"{name:<18} {seconds * 1e3:>10.1f} {seconds / update:>6.0%} {flops / 1e9:>7.2f} "
            f"{achieved / 1e9:>8.1f} {achieved / rate:>10.0%}"
        )
    lines.append(
        f"{'update':<18} {update * 1e3:>10.1f} {1:>6.0%} {total / 1e9:>7.2f} {total / update / 1e9:>8.1f} "
        f"{total / update / rate:>10.0%}   ({result['ntokens']} tokens, {result['ntokens'] / update:,.0f} wps)"
    )
    return lines


def flop_fraction(flags: list[str], threads: int, repeats: int) -> dict:
    """Build the trainer for ``flags`` in this process (a world of one) and measure; prints the table."""
    from adaptive_lm_ds.training.config import config_from_args, parse_args
    from adaptive_lm_ds.training.trainer import Trainer

    torch.set_num_threads(threads)
    cfg = config_from_args(parse_args(flags, "wiki103"))
    parallel.init_process_group(world_of_one=True)
    try:
        trainer = Trainer(cfg)
        m = trainer.model_cfg
        tokens = trainer.micro * cfg.data.tokens_per_sample
        rate, shape_lines = matmul_rate(tokens, m.embed_dim, m.ffn_dim, repeats)
        result = measure(trainer, repeats)
    finally:
        parallel.shutdown()
    print(f"fp32 matmul rate at the blocks' GEMM shapes, {threads} threads: {rate / 1e9:.1f} GFLOP/s", flush=True)
    print("\n".join(shape_lines + report(result, rate)), flush=True)
    return {"matmul_flops_per_s": rate, **result}
