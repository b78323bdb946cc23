"""Check the step-time projection against measured steps on this machine: TP1, TP2 and DP2 on CPU ranks.

    adaptive-lm-bench-projection [--vocab 200000] [--d 256] [--layers 2] [--batch 4] [--seq 128] [--json FILE]

Each layout runs the product's update (``bench_train.build_stepper``: ``build_engine``, ZeRO-1, fp32,
--clip-norm 0.1, NAG) on the bench model in its own launch (gloo ranks on this machine's cores). Each
launch also measures this machine's link: a 16 MB all-reduce (bandwidth) and a one-element one
(latency, per call). Every layout uses all cores (one thread per core, split over its ranks, as torchrun
does). The projection (:mod:`adaptive_lm_ds.projection`) takes one calibration, a separate TP1 update
on one thread (achieved FLOP/s per core = its FLOPs / its time; the machine = that x cores, shared by a
layout's ranks), and the measured link, and predicts TP1, TP2 and DP2 from the FLOPs and the
communication model alone; it prints measured, projected and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

from adaptive_lm_ds import cli, parallel
from adaptive_lm_ds.comm_model import CommSetting
from adaptive_lm_ds.commands.bench_train import ZIPF_EXPONENT, build_stepper, make_batch, small_config, timed_step
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.projection import Device, project
from adaptive_lm_ds.testing import run_on_ranks

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "dp2": (1, 2)}  # name: (tp, dp); each layout uses every core
PROBE_ELEMENTS = 1 << 22  # 16 MB of fp32
CALIBRATION = "tp1-one-thread"


def _probe_link() -> tuple[float, float]:
    """(bytes/s of a ring all-reduce's wire bytes, seconds per one-element all-reduce) on the world group."""
    n = dist.get_world_size()
    if n == 1:
        return float("inf"), 0.0
    big, small = torch.ones(PROBE_ELEMENTS), torch.ones(1)
    dist.all_reduce(big)
    start = time.perf_counter()
    for _ in range(3):
        dist.all_reduce(big)
    seconds = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(small)
    latency = (time.perf_counter() - start) / 20
    return 2 * (n - 1) / n * big.numel() * 4 / max(seconds - latency, 1e-9), latency


def _layout_body(options: dict, tp: int, dp: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    args = argparse.Namespace(**{**options, "packed": False, "dtype": "fp32", "compile": False,
                                 "deepspeed_config": None})  # fmt: skip
    cfg = small_config(args.vocab, args.d, args.layers)
    parallel.initialize_parallel(parallel.ParallelDims(tp=tp, dp=dp))
    try:
        bandwidth, latency = _probe_link()
        stepper = build_stepper(cfg, args)
        times = []
        for i in range(args.warmup + args.steps):
            data, _ = make_batch(cfg, args.batch, args.seq, False, seed=i * dp + parallel.current().dp_rank)
            seconds = timed_step(stepper, data)
            if i >= args.warmup:
                times.append(seconds)
        return {"step_s": times, "bandwidth": bandwidth, "latency": latency}
    finally:
        parallel.destroy_parallel()


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cfg = small_config(args.vocab, args.d, args.layers)
    cores = os.cpu_count() or 1
    measured = {}
    for name, (tp, dp) in {CALIBRATION: (1, 1), **LAYOUTS}.items():
        threads = 1 if name == CALIBRATION else max(1, cores // (tp * dp))
        ranks = run_on_ranks(_layout_body, nprocs=tp * dp, timeout=1200, options=vars(args), tp=tp, dp=dp,
                             threads=threads)  # fmt: skip
        measured[name] = {
            "step_s": max(statistics.median(r["step_s"]) for r in ranks),
            "bandwidth": ranks[0]["bandwidth"], "latency": ranks[0]["latency"], "raw": ranks,
        }  # fmt: skip
    link = measured["tp2"]
    unit = Device("unit", 1.0, link["bandwidth"], link["bandwidth"], link["latency"], shares_cores=True)

    def projected(tp: int, dp: int, device: Device) -> float:
        setting = CommSetting(tp=tp, dp=dp, zero_stage=1, precision="fp32", micro_batch=args.batch, seq_len=args.seq)
        return project(cfg, setting, device, efficiency=1.0, gpus_per_node=tp * dp,
                       zipf_exponent=ZIPF_EXPONENT).step_s  # fmt: skip

    per_core = projected(1, 1, unit) / measured[CALIBRATION]["step_s"]  # FLOPs of a TP1 update / its time
    machine = Device("this CPU", per_core * cores, link["bandwidth"], link["bandwidth"], link["latency"],
                     shares_cores=True)  # fmt: skip
    print(f"bench model: vocab {args.vocab}, d {args.d}, {args.layers} layers, micro batch {args.batch} x {args.seq}")
    print(f"machine: {per_core / 1e9:.1f} GFLOP/s per core achieved by a TP1 update on one thread (the calibration, "
          f"{measured[CALIBRATION]['step_s'] * 1e3:.1f} ms), {cores} cores; link {link['bandwidth'] / 1e9:.2f} GB/s, "
          f"{link['latency'] * 1e6:.0f} us per collective")  # fmt: skip
    result = {
        "per_core_flops": per_core, "calibration_step_s": measured[CALIBRATION]["step_s"],
        "link_bytes_per_s": link["bandwidth"], "latency_s": link["latency"], "layouts": {},
    }  # fmt: skip
    for name, (tp, dp) in LAYOUTS.items():
        want = projected(tp, dp, machine)
        got = measured[name]["step_s"]
        print(f"  {name}: measured {got * 1e3:7.1f} ms, projected {want * 1e3:7.1f} ms, ratio {want / got:.2f}")
        result["layouts"][name] = {"measured_s": got, "projected_s": want, "raw": measured[name]["raw"]}
    if args.json:
        atomic_write_json(args.json, result)
    return 0
