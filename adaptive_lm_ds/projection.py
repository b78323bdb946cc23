"""Expected step time and tokens/s of a layout: the update's FLOPs at an achieved rate, plus the transfers of
:mod:`adaptive_lm_ds.comm_model` that do not overlap with compute, at a device's link bandwidths.

    compute  = FLOPs per token (flops.py, x3 for training) x tokens per rank per update
               / (peak x efficiency), x (gas + pp - 1) / gas for the pipeline's fill and drain
    transfer = sum over axes of wire bytes / link bandwidth + calls x latency   (each axis on its link)
    step     = compute + the transfers that do not overlap + the overlapped ones beyond the backward pass

A group is on the in-node link when it fits in a node: ranks are ordered TP fastest, then DP, then PP
(megatron-core's order), so TP spans ``tp`` consecutive GPUs, DP ``tp * dp`` and PP the whole world.

**What overlaps under the DeepSpeed settings used** (ds_configs/): TP all-reduces sit in the forward
and backward critical path; DeepSpeed's pipeline sends are blocking; the tied tables' all-reduce runs after
the last backward; the plain engine's DP all-reduce runs at the accumulation boundary, after backward;
ZeRO-1/2 reduce after backward unless ``overlap_comm`` (off in ds_configs/zero1*.json, zero2*.json) and
all-gather the updated parameters after the step; ZeRO-3 (``overlap_comm`` on by default) prefetches
parameters and reduce-scatters gradients during the passes: those overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from adaptive_lm_ds.comm_model import CommSetting, Term, expected_band_tokens, update_terms, wire_bytes
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.flops import flops_per_token, zipf_band_fractions

GB = 1e9


@dataclass(frozen=True)
class Device:
    """A device's published dense peak and link bandwidths (per GPU, one direction)."""

    name: str
    peak_flops: float  # dense, in the training precision
    in_node_bytes_per_s: float  # NVLink (or this machine's shared-memory transport)
    inter_node_bytes_per_s: float  # the network card(s) per GPU
    latency_s: float = 10e-6  # per collective call
    shares_cores: bool = False  # a CPU: the ranks of a layout share the machine's compute


# Published figures: H100/H200 SXM 989 TFLOP/s bf16 dense, NVLink 4 900 GB/s (450 each way), NDR 400 Gb/s
# per GPU; A100 SXM 312 TFLOP/s, NVLink 3 600 GB/s (300 each way), HDR 200 Gb/s per GPU.
DEVICES = {
    "h100": Device("H100 SXM", 989e12, 450 * GB, 50 * GB),
    "h200": Device("H200 SXM", 989e12, 450 * GB, 50 * GB),
    "a100": Device("A100 SXM", 312e12, 300 * GB, 25 * GB),
}


@dataclass(frozen=True)
class Projection:
    compute_s: float
    exposed_transfer_s: float  # transfers that do not overlap with compute
    hidden_transfer_s: float  # overlapped transfers (hidden behind the backward pass)
    step_s: float
    tokens_per_s: float  # all ranks
    terms: list[tuple[Term, float, str, bool]]  # (term, seconds, link, overlapped), the busiest stage's


def overlapped(term: Term, s: CommSetting, overlap_comm: bool) -> bool:
    """Module docstring: only ZeRO's gradient reduction with ``overlap_comm`` and ZeRO-3's gathers overlap."""
    if term.axis != "dp" or s.zero_stage == 0:
        return False
    if s.zero_stage == 3:
        return overlap_comm
    return overlap_comm and term.op == "reduce_scatter"


def link(axis: str, s: CommSetting, gpus_per_node: int) -> str:
    span = {"tp": s.tp, "dp": s.tp * s.dp, "pp": s.tp * s.dp * s.pp}[axis]
    return "in-node" if span <= gpus_per_node else "inter-node"


def project(
    cfg: ModelConfig, s: CommSetting, device: Device, *, efficiency: float, gpus_per_node: int,
    overlap_comm: bool = False, attention_context: float | None = None, zipf_exponent: float = 1.0,
) -> Projection:  # fmt: skip
    """The expected step of ``cfg`` under setting ``s`` on ``device`` (module docstring)."""
    out_fractions = zipf_band_fractions(cfg.output_bands(), zipf_exponent)
    in_fractions = zipf_band_fractions(cfg.input_bands(), zipf_exponent)
    context = attention_context if attention_context is not None else (s.seq_len + 1) / 2
    per_token = flops_per_token(cfg, context, in_fractions, out_fractions).training
    world = s.tp * s.pp * s.dp
    tokens = s.micro_batch * s.seq_len * s.gradient_accumulation * s.dp  # per update, all ranks
    rate = device.peak_flops * efficiency / (world if device.shares_cores else 1)
    bubble = (s.gradient_accumulation + s.pp - 1) / s.gradient_accumulation
    compute = per_token * tokens / (world * rate) * bubble
    worst = None
    for stage in range(s.pp):
        rows = []
        for term in update_terms(cfg, s, stage, expected_band_tokens(cfg, s, out_fractions)):
            where = link(term.axis, s, gpus_per_node)
            bandwidth = device.in_node_bytes_per_s if where == "in-node" else device.inter_node_bytes_per_s
            size = s.tp if term.axis == "tp" else s.dp if term.axis == "dp" else 2
            seconds = wire_bytes(term, s) / bandwidth + (term.calls * device.latency_s if size > 1 else 0.0)
            rows.append((term, seconds, where, overlapped(term, s, overlap_comm)))
        exposed = sum(t for _, t, _, o in rows if not o)
        hidden = sum(t for _, t, _, o in rows if o)
        if worst is None or exposed + hidden > worst[0] + worst[1]:
            worst = (exposed, hidden, rows)
    exposed, hidden, rows = worst
    backward = compute * 2 / 3  # backward is two thirds of a training step's FLOPs
    step = compute + exposed + max(0.0, hidden - backward)
    return Projection(compute, exposed, hidden, step, tokens / step, rows)
