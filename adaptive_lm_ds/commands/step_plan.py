"""Expected step time, tokens/s and every transfer of one update, for a model, a layout and a device.

    adaptive-lm-step-plan --preset gbw_huge --data-parallel-size 8 --zero-stage 1 --micro-batch 8 \\
        --seq-len 512 --packed --device h100 --gpus-per-node 8 [--efficiency 0.4] [--json FILE]

The communication table is :mod:`adaptive_lm_ds.comm_model` for the busiest pipeline stage (the minimum a
rank must send, the same model tests/test_comm_ledger.py holds every layout's real update to); the time is
:mod:`adaptive_lm_ds.projection`. ``--efficiency`` is the fraction of the device's peak the update's
FLOPs run at (not yet measured on a GPU: the default 0.4 is a planning figure, not a measurement);
``--device custom`` takes ``--peak-tflops``, ``--in-node-gbps`` and ``--inter-node-gbps`` (GB/s per GPU).
"""

from __future__ import annotations

import argparse
import sys

from adaptive_lm_ds import cli
from adaptive_lm_ds.comm_model import CommSetting, wire_bytes
from adaptive_lm_ds.commands.memory_plan import add_model_and_layout_arguments
from adaptive_lm_ds.config import get_preset
from adaptive_lm_ds.data.dictionary import atomic_write_json
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.memory import PRECISION_BYTES
from adaptive_lm_ds.projection import DEVICES, GB, Device, project

MB = 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.parser(description=__doc__.splitlines()[0])
    add_model_and_layout_arguments(parser)
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=1)
    parser.add_argument("--overlap-comm", action="store_true", help="DeepSpeed's zero_optimization.overlap_comm")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per micro batch")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--update-freq", type=int, default=1, help="micro batches per update per rank")
    parser.add_argument("--precision", choices=sorted(PRECISION_BYTES), default="bf16")
    parser.add_argument("--packed", action="store_true", help="segment ids travel with the activations")
    parser.add_argument("--device", choices=[*sorted(DEVICES), "custom"], default="h100")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--efficiency", type=float, default=0.4, help="achieved fraction of the peak (planning)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="--device custom: dense peak")
    parser.add_argument("--in-node-gbps", type=float, default=None, help="--device custom: GB/s per GPU")
    parser.add_argument("--inter-node-gbps", type=float, default=None, help="--device custom: GB/s per GPU")
    parser.add_argument("--latency-us", type=float, default=10.0, help="--device custom: per collective call")
    parser.add_argument("--shares-cores", action="store_true", help="--device custom: ranks share one CPU")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def device_from(args: argparse.Namespace) -> Device:
    if args.device != "custom":
        return DEVICES[args.device]
    if None in (args.peak_tflops, args.in_node_gbps, args.inter_node_gbps):
        raise UserError("--device custom needs --peak-tflops, --in-node-gbps and --inter-node-gbps")
    return Device("custom", args.peak_tflops * 1e12, args.in_node_gbps * GB, args.inter_node_gbps * GB,
                  args.latency_us * 1e-6, args.shares_cores)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = get_preset(args.preset, args.vocab_size)
    setting = CommSetting(
        tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size, dp=args.data_parallel_size,
        zero_stage=args.zero_stage, precision=args.precision, micro_batch=args.micro_batch,
        seq_len=args.seq_len, gradient_accumulation=args.update_freq, packed=args.packed,
    )  # fmt: skip
    cfg.validate(setting.tp)
    device = device_from(args)
    result = project(cfg, setting, device, efficiency=args.efficiency, gpus_per_node=args.gpus_per_node,
                     overlap_comm=args.overlap_comm)  # fmt: skip
    world = setting.tp * setting.pp * setting.dp
    print(f"{args.preset} on {world} x {device.name} ({args.gpus_per_node} per node): TP{setting.tp} PP{setting.pp} "
          f"DP{setting.dp}, ZeRO-{setting.zero_stage}, {args.precision}, micro batch {args.micro_batch} x "
          f"{args.seq_len}, update-freq {args.update_freq}")  # fmt: skip
    header = f"{'axis':<5}{'op':<15}{'calls':>7}{'payload MB':>12}{'wire MB':>10}{'ms':>9}  {'link':<11}{'overlaps':<9}"
    print(f"\n{header}what")
    rows = []
    for term, seconds, where, hidden in result.terms:
        wire = wire_bytes(term, setting)
        print(f"{term.axis:<5}{term.op:<15}{term.calls:>7.0f}{term.bytes / MB:>12.2f}{wire / MB:>10.2f}"
              f"{seconds * 1e3:>9.2f}  {where:<11}{'yes' if hidden else 'no':<9}{term.what}"
              f"{' (excess)' if term.excess else ''}")  # fmt: skip
        rows.append({"axis": term.axis, "op": term.op, "what": term.what, "calls": term.calls, "bytes": term.bytes,
                     "wire_bytes": wire, "seconds": seconds, "link": where, "overlapped": hidden})  # fmt: skip
    print(f"\ncompute {result.compute_s * 1e3:.1f} ms at {args.efficiency:.0%} of {device.peak_flops / 1e12:.0f} "
          f"TFLOP/s; transfers exposed {result.exposed_transfer_s * 1e3:.1f} ms, overlapped "
          f"{result.hidden_transfer_s * 1e3:.1f} ms")  # fmt: skip
    print(f"step {result.step_s * 1e3:.1f} ms; {result.tokens_per_s:,.0f} tokens/s "
          f"({result.tokens_per_s / world:,.0f} per GPU)")  # fmt: skip
    if args.json:
        atomic_write_json(args.json, {"setting": vars(args), "compute_s": result.compute_s,
                                      "exposed_transfer_s": result.exposed_transfer_s,
                                      "hidden_transfer_s": result.hidden_transfer_s, "step_s": result.step_s,
                                      "tokens_per_s": result.tokens_per_s, "transfers": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
