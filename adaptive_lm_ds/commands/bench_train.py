"""Training-step throughput: adaptive input + softmax vs full embedding + softmax, and TP=2 vs TP=1.

    adaptive-lm-bench-train [--vocab 200000] [--d 256] [--layers 2] [--batch 4] [--seq 128] [--json FILE]
    adaptive-lm-bench-train --preset gbw_huge --device cuda --dtype bf16 --packed --batch 16 --seq 512 \\
        --skip-tp [--compile] --json $OUT/train.json        # the GPU runs (tools/bench_gpu.sh)

A step is the product's update, ``Stepper.train_step`` on the DeepSpeed engine training builds
(adaptive_lm_ds/training/engine.py: forward, backward, --clip-norm 0.1, fairseq's NAG; ZeRO-1 unless
``--deepspeed_config`` says otherwise; bf16 with ``--dtype bf16``), on a micro batch of Zipf-distributed ids
(exponent 1.1, as fitted to WikiText-2 by adaptive-lm-bench-softmax) handed over as the data loader
does (CPU tensors; the step moves them to the device). The adaptive and the full
model run interleaved in one process; the ratio ``speedup_adaptive_vs_full`` is of their median step
times. TP=2 runs the adaptive model on 2 CPU ranks (torchrun, gloo) and times every
``torch.distributed`` collective the step makes, giving the communication share of the step. On a GPU
it also reports peak memory and MFU (adaptive_lm_ds.flops: frequency-weighted adaptive FLOPs,
block-diagonal attention context when ``--packed``; on a CPU only with ``--peak-tflops``); an
out-of-memory is reported as such. ``--compile`` compiles every transformer block of both models.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.config import ModelConfig, default_cutoffs, get_preset
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.flops import flops_per_token, mfu, packed_attention_context, peak_bf16_flops, zipf_band_fractions
from adaptive_lm_ds.launch import free_port
from adaptive_lm_ds.testing import run_on_ranks
from adaptive_lm_ds.training.config import build_parser, config_from_args
from adaptive_lm_ds.training.ds_config import build_plan, load_ds_json
from adaptive_lm_ds.training.engine import Stepper, build_module
from adaptive_lm_ds.training.engine_build import build_engine

ZIPF_EXPONENT = 1.1
GBW_MEAN_SENTENCE = 27  # GBW's mean sentence length in tokens (with </s>)


def small_config(vocab: int, d: int, layers: int) -> ModelConfig:
    cutoffs = default_cutoffs(vocab)
    return ModelConfig(
        vocab_size=vocab,
        embed_dim=d,
        ffn_dim=4 * d,
        num_layers=layers,
        num_heads=4,
        dropout=0.0,
        adaptive_input_cutoffs=cutoffs,
        adaptive_softmax_cutoffs=cutoffs,
        tie_adaptive_weights=True,
    )


def full_softmax(cfg: ModelConfig) -> ModelConfig:
    """The same transformer with one full embedding shared with a full softmax."""
    return cfg.replace(
        adaptive_input=False,
        adaptive_softmax=False,
        tie_adaptive_weights=False,
        tie_adaptive_proj=False,
        share_input_output_embed=True,
    )


def make_batch(cfg: ModelConfig, batch: int, seq: int, packed: bool, seed: int) -> tuple[dict, list[int]]:
    """A micro batch as the data loader yields it (CPU tensors: tokens, targets [B, T], ``segment_ids`` when
    packed, ``ntokens``) of Zipf-distributed ids, and the lengths of its sentences."""
    rng = np.random.default_rng(seed)
    words = cfg.vocab_size - 4
    probs = np.arange(1, words + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    ids = torch.from_numpy(rng.choice(words, size=(batch, seq + 1), p=probs / probs.sum()) + 4)
    data = {"tokens": ids[:, :-1], "targets": ids[:, 1:], "ntokens": batch * seq}
    lengths = [seq] * batch
    if packed:  # GBW-length sentences packed back to back: lengths 2 .. 2 * mean
        lengths, segments = [], torch.zeros(batch, seq, dtype=torch.long)
        for row in range(batch):
            pos, sid = 0, 0
            while pos < seq:
                n = min(int(rng.integers(2, 2 * GBW_MEAN_SENTENCE)), seq - pos)
                segments[row, pos : pos + n] = sid
                lengths.append(n)
                pos, sid = pos + n, sid + 1
        data["segment_ids"] = segments
    return data, lengths


DEFAULT_DS_JSON = {"zero_optimization": {"stage": 1}}  # as ds_configs/zero1*.json; --deepspeed_config overrides


def build_stepper(cfg: ModelConfig, args) -> Stepper:
    """The product's step for ``cfg`` in the current layout: ``build_module`` and ``build_engine`` as training
    calls them (fairseq's NAG, --clip-norm 0.1, the batch geometry completed by ``build_ds_config``, the lr
    schedule) and the ``Stepper`` that runs an update on it."""
    flags = ["--batch-size", args.batch, "--tokens-per-sample", args.seq, "--update-freq", 1, "--clip-norm", 0.1,
             "--optimizer", "nag", "--lr", 0.01, "--momentum", 0.99]  # fmt: skip
    train_cfg = config_from_args(build_parser("bench").parse_args([str(f) for f in flags]))
    user_json = load_ds_json(args.deepspeed_config) if args.deepspeed_config else copy.deepcopy(DEFAULT_DS_JSON)
    if args.dtype == "bf16":
        user_json.setdefault("bf16", {})["enabled"] = True
    layout = parallel.current()
    plan = build_plan(train_cfg, layout.dp, layout.pp, user_json)
    module = build_module(cfg, checkpoint_activations=False, seed=1, compile=args.compile)
    return build_engine(module, train_cfg.optim, plan, packed=args.packed, max_update=10**9).stepper


def timed_step(stepper: Stepper, batch: dict) -> float:
    """Wall time in seconds of one update (forward, backward, clipping, optimizer step) on ``batch``."""
    _sync(stepper.device)
    start = time.perf_counter()
    stepper.train_step([batch])
    _sync(stepper.device)
    return time.perf_counter() - start


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class CollectiveTimer:
    """Wraps ``torch.distributed`` collectives (megatron-core looks them up at call time) to time them."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast")

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._saved = {}

    def __enter__(self):
        for name in self.NAMES:
            original = getattr(dist, name)
            self._saved[name] = original

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                result = _original(*args, **kwargs)
                self.seconds += time.perf_counter() - start
                self.calls += 1
                return result

            setattr(dist, name, timed)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(dist, name, original)


def _tp_rank_body(options: dict) -> dict:
    """On each of 2 ranks: TP=2 steps of the small model (fp32, unpacked) with the collectives timed."""
    args = argparse.Namespace(**{**options, "packed": False, "dtype": "fp32", "compile": False})
    cfg = small_config(args.vocab, args.d, args.layers)
    parallel.initialize_parallel(parallel.ParallelDims(tp=2))
    try:
        stepper = build_stepper(cfg, args)
        times, comm, calls = [], [], []
        for i in range(args.warmup + args.steps):
            data, _ = make_batch(cfg, args.batch, args.seq, False, seed=i)
            with CollectiveTimer() as timer:
                seconds = timed_step(stepper, data)
            if i >= args.warmup:
                times.append(seconds)
                comm.append(timer.seconds)
                calls.append(timer.calls)
        return {"step_s": times, "comm_s": comm, "collectives_per_step": calls[-1]}
    finally:
        parallel.destroy_parallel()


def bench_single(args, device: torch.device) -> dict:
    """Adaptive vs full model, interleaved; on a GPU an OOM of either is recorded, not raised."""
    cfg = get_preset(args.preset) if args.preset else small_config(args.vocab, args.d, args.layers)
    variants = {"adaptive": cfg, "full": full_softmax(cfg)}
    times: dict[str, list[float] | str] = {}
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    parallel.init_process_group(world_of_one=True)  # as training: DeepSpeed's engine needs a launcher's world
    parallel.initialize_parallel(parallel.ParallelDims())
    try:
        steppers = {}
        for name, variant in variants.items():
            try:
                steppers[name] = build_stepper(variant, args)
            except torch.OutOfMemoryError as err:
                times[name] = f"OOM while building: {str(err).splitlines()[0]}"
        for name in steppers:
            times[name] = []
        lengths = []
        for i in range(args.warmup + args.steps):
            for name in list(steppers):
                data, lengths = make_batch(variants[name], args.batch, args.seq, args.packed, seed=i)
                try:
                    seconds = timed_step(steppers[name], data)
                except torch.OutOfMemoryError as err:
                    times[name] = f"OOM in the step: {str(err).splitlines()[0]}"
                    del steppers[name]
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                if i >= args.warmup:
                    times[name].append(seconds)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            if "adaptive" in steppers:
                timed_step(steppers["adaptive"], make_batch(cfg, args.batch, args.seq, args.packed, 0)[0])
    finally:
        parallel.shutdown()
    tokens = args.batch * args.seq
    out = {
        "tokens_per_step": tokens,
        "compile": args.compile,
        "raw_step_s": times,
        "config": {k: str(v) for k, v in vars(cfg).items()},
    }
    for name, ts in times.items():
        if isinstance(ts, list) and ts:
            out[f"{name}_tokens_per_s"] = tokens / statistics.median(ts)
    if "adaptive_tokens_per_s" in out and "full_tokens_per_s" in out:
        out["speedup_adaptive_vs_full"] = out["adaptive_tokens_per_s"] / out["full_tokens_per_s"]
    context = packed_attention_context(lengths) if args.packed else (args.seq + 1) / 2
    fractions = zipf_band_fractions(cfg.output_bands(), ZIPF_EXPONENT)
    in_fractions = zipf_band_fractions(cfg.input_bands(), ZIPF_EXPONENT)
    out["model_flops_per_token"] = flops_per_token(cfg, context, in_fractions, fractions).training
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
        peak = peak or peak_bf16_flops(out["gpu"])
    if peak and "adaptive_tokens_per_s" in out:
        out["mfu"] = mfu(out["adaptive_tokens_per_s"], out["model_flops_per_token"], peak)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a named preset instead of the small CPU model")
    parser.add_argument("--vocab", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--packed", action="store_true", help="GBW-length sentences, block-diagonal attention")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="the device DeepSpeed's accelerator gives (DS_ACCELERATOR)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak for MFU (default: known GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    parser.add_argument("--skip-tp", action="store_true", help="skip the 2-rank TP=2 measurement")
    parser.add_argument("--deepspeed_config", help="DeepSpeed JSON (default: ZeRO-1; --dtype bf16 enables bf16)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = parallel.accelerator_device()
    if device.type != torch.device(args.device).type:
        raise UserError(f"--device {args.device} but DeepSpeed's accelerator is {device.type}; set DS_ACCELERATOR")
    result = bench_single(args, device)
    mode = "compiled blocks" if args.compile else "eager"
    print(
        f"{args.preset or 'small'} model, {result['tokens_per_step']} tokens/step, {args.device} {args.dtype}, {mode}"
    )
    for name in ("adaptive", "full"):
        raw = result["raw_step_s"].get(name)
        shown = f"{result[f'{name}_tokens_per_s']:,.0f} tokens/s" if f"{name}_tokens_per_s" in result else raw
        print(f"  {name:<9} {shown}")
    for key in ("speedup_adaptive_vs_full", "mfu", "peak_memory_gib", "model_flops_per_token"):
        if key in result:
            print(f"  {key}: {result[key]:.4g}")
    if not args.skip_tp and args.device == "cpu":
        ranks = run_on_ranks(_tp_rank_body, nprocs=2, timeout=900, options=vars(args))
        step = max(statistics.median(r["step_s"]) for r in ranks)
        comm = max(statistics.median(r["comm_s"]) for r in ranks)
        result["tp2"] = {"ranks": ranks, "median_step_s": step, "median_comm_s": comm}
        result["tp2_tokens_per_s"] = result["tokens_per_step"] / step
        result["tp2_comm_fraction"] = comm / step
        result["tp2_vs_tp1_step_time"] = result["tokens_per_step"] / result["adaptive_tokens_per_s"] / step
        print(f"  TP=2 (2 ranks): {result['tp2_tokens_per_s']:,.0f} tokens/s, step {step * 1e3:.0f} ms, ")
        calls, ratio = ranks[0]["collectives_per_step"], result["tp2_vs_tp1_step_time"]
        print(f"    collectives {comm * 1e3:.0f} ms = {result['tp2_comm_fraction']:.0%} of the step ({calls} calls)")
        print(f"    TP1 step time / TP2 step time: {ratio:.2f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0
