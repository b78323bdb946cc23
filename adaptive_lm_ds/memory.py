"""Per-rank memory of a training layout: runtime, parameters, gradients, optimizer states, activations,
transients (bytes): a GPU's memory, or a CPU rank's peak RSS (``device="cpu"``).

Parameter counts come from the real modules, built on the meta device as one TP rank of each pipeline
stage (bands are padded to a multiple of TP, so every TP rank has the same shapes). The rest is the
ZeRO paper's accounting (Rajbhandari et al. 2020) plus an activation model read off this code:

* weights and gradients in the training precision (4 bytes fp32, 2 bf16/fp16);
* optimizer states in fp32 (NAG: 1 momentum buffer, Adam/AdamW: 2), plus fp32 master weights under
  bf16/fp16 and under ZeRO 1-3 (DeepSpeed's ZeRO keeps an fp32 partition even in fp32 training);
* ZeRO stage >= 1 splits optimizer states + master weights over DP, >= 2 also gradients, 3 also weights;
  CPU offload moves the optimizer states and master weights to host memory (reported as ``cpu``);
* activations = the tensors autograd saves for backward, per token of a micro batch (``b * T``), with
  ``a`` activation bytes (4 fp32, 2 bf16/fp16), ``t`` TP, per block: layer-norm inputs and outputs
  ``4d`` and the LN statistics (16 bytes), q, k, v and the attention output ``4d/t``, the attention
  log-sum-exp ``heads/t`` (fp32), the FFN hidden ``f/t``; with packed sentences the boolean
  block-diagonal mask, which SDPA turns into an additive ``[b, 1, T, T]`` mask per block (``T``
  elements per token); with dropout, 1-byte masks. Under activation checkpointing a block keeps only
  its input ``d`` and one block is live again during its recompute. The adaptive input keeps each
  band's looked-up vectors; the adaptive softmax keeps its input, and per logit the logits
  (``a`` bytes, for ``gather`` and ``logsumexp``) plus their fp32 copy under bf16/fp16: all head
  columns for every token, tail ``i``'s for its share of the targets only. Pipeline stage ``s`` of
  ``pp`` holds ``pp - s`` micro batches in flight (DeepSpeed's 1F1B schedule).

What DeepSpeed and torch allocate besides (measured at gbw_huge's real shapes on CPU, BENCHMARKS.md
"Memory at real shapes"):

* ``transient``: without ZeRO at DP > 1, the engine's flat copy of the gradients it all-reduces (up to
  :data:`DEEPSPEED_ALLREDUCE_ELEMENTS`); under ZeRO-1/2 the larger of its gradient reduce bucket
  (:data:`ZERO_BUCKET_ELEMENTS` fp32 elements, allocated at every backward) and the step's flat copy
  of one param group's gradient partition plus its fp32 cast (``bit16`` and fp32 bytes per element;
  ``build_optimizer`` cuts a rank's parameters into :data:`~adaptive_lm_ds.optim.optimizers.PARAM_GROUPS`
  groups). The bucket lives beside the activations; the copies after the backward replace them, so
  ``transient`` is what DeepSpeed holds beyond the activations at either time.
* ``runtime`` (CPU only): the RSS of an idle rank with torch, DeepSpeed and megatron-core imported and
  the process groups created (:data:`CPU_RUNTIME_BYTES`), plus the copies of the dictionary a training
  rank holds (:data:`DICTIONARY_COPIES` x :data:`DICTIONARY_BYTES_PER_TYPE` per word type). On a GPU
  the CUDA context and allocator fragmentation are not modelled; the planner's ``--reserve`` covers them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.flops import zipf_band_fractions
from adaptive_lm_ds.layers import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.model import AdaptiveLM, pipeline_stage_layers
from adaptive_lm_ds.optim.optimizers import group_bounds

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATES = {"nag": 1, "adam": 2, "adamw": 2}
FP32 = 4
# ZeRO-1/2 reduce bucket (elements) our DeepSpeed configs default to (training/ds_config.py). DeepSpeed's
# own default, 5e8, allocates a 5e8-element gradient buffer at every backward: 1 GB in bf16 per rank.
ZERO_BUCKET_ELEMENTS = 1 << 25
# DeepSpeed's engine without ZeRO all-reduces DP gradients in flat copies of up to this many elements
# (``MEMORY_OPT_ALLREDUCE_SIZE``, not configurable).
DEEPSPEED_ALLREDUCE_ELEMENTS = 500_000_000
# Measured on this project's CPU machine (2-core x86-64 VM, torch 2.13, deepspeed 0.19.8, megatron-core
# 0.16.1), 2026-11-30, by importing adaptive_lm_ds.training.trainer (torch, deepspeed, megatron.core) and
# entering parallel.single_process() (gloo + megatron groups), then reading VmRSS: 400,773,120 bytes.
CPU_RUNTIME_BYTES = 400_773_120
# One Dictionary.load of gbw's 793,475-type dict.txt, same session: +140.2 MB and +142.9 MB = 178 bytes
# per type. A training rank holds 3 (the trainer's, and one per train/valid dataset: data/blocks.py).
DICTIONARY_BYTES_PER_TYPE = 178
DICTIONARY_COPIES = 3


class MemoryPlanError(UserError, ValueError):
    """A layout the planner cannot describe; the message says what to change."""


@dataclass(frozen=True)
class TrainLayout:
    """Everything besides the model that decides per-rank memory: the parallel sizes (``dims``, the one
    layout object, :class:`~adaptive_lm_ds.parallel.ParallelDims`) and the training settings."""

    dims: parallel.ParallelDims = parallel.ParallelDims()
    zero_stage: int = 0
    micro_batch: int = 1
    seq_len: int = 512
    precision: str = "bf16"
    optimizer: str = "nag"
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    packed: bool = False  # block-diagonal attention over packed sentences
    device: str = "gpu"  # "cpu": the plan is a rank's peak RSS (runtime baseline included)

    tp = property(lambda self: self.dims.tp)
    pp = property(lambda self: self.dims.pp)
    dp = property(lambda self: self.dims.dp)
    world_size = property(lambda self: self.dims.world_size)

    def as_dict(self) -> dict:
        """Flat JSON form: the sizes, then the settings."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dims"}
        return {**self.dims.to_record(), **settings}

    def validate(self, cfg: ModelConfig) -> TrainLayout:
        if self.precision not in PRECISION_BYTES:
            raise MemoryPlanError(f"precision {self.precision!r} is unknown; use one of {sorted(PRECISION_BYTES)}")
        if self.optimizer not in OPTIMIZER_STATES:
            raise MemoryPlanError(f"optimizer {self.optimizer!r} is unknown; use one of {sorted(OPTIMIZER_STATES)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise MemoryPlanError(f"ZeRO stage {self.zero_stage} does not exist; use 0, 1, 2 or 3")
        if self.pp > 1 and self.zero_stage > 1:
            raise MemoryPlanError("DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only; lower the stage")
        if self.cpu_offload and self.zero_stage == 0:
            raise MemoryPlanError("CPU offload needs ZeRO stage >= 1")
        if self.device not in ("cpu", "gpu"):
            raise MemoryPlanError(f"device {self.device!r} is unknown; use cpu or gpu")
        if min(self.tp, self.pp, self.dp, self.micro_batch, self.seq_len) < 1:
            raise MemoryPlanError(f"{self} has a size below 1")
        cfg.validate(self.tp)
        pipeline_stage_layers(cfg.num_layers, self.pp)
        return self


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on one rank of the given pipeline ``stage`` (the fullest stage for :func:`plan_memory`)."""

    stage: int
    params: int
    grads: int
    optimizer: int
    activations: int
    cpu: int  # host bytes per rank (offloaded optimizer states)
    transient: int = 0  # DeepSpeed's reduce bucket / one group's fp32 gradient at the step
    runtime: int = 0  # CPU: the idle rank's RSS (imports, groups, dictionaries); GPU: 0 (not modelled)

    @property
    def total(self) -> int:
        return self.runtime + self.params + self.grads + self.optimizer + self.activations + self.transient


def stage_parameter_counts(cfg: ModelConfig, tp: int, pp: int) -> tuple[int, ...]:
    """Parameters of one TP rank of each pipeline stage (see :func:`stage_parameter_stats`)."""
    return tuple(count for count, _ in stage_parameter_stats(cfg, tp, pp))


@functools.lru_cache(maxsize=64)
def stage_parameter_stats(cfg: ModelConfig, tp: int, pp: int) -> tuple[tuple[int, int], ...]:
    """``(parameters, largest param group)`` of one TP rank of each pipeline stage, from meta-device modules
    (groups as ``build_optimizer`` cuts them, :func:`~adaptive_lm_ds.optim.optimizers.group_bounds`).

    With PP > 1 the last stage builds its own softmax (own copies of the tied tables), as a pipeline
    split does. megatron-core reads a group's size only once torch.distributed is up, so a world-size-1
    group is set up for the count when there is none.
    """
    if not dist.is_initialized():
        with parallel.single_process():
            return stage_parameter_stats.__wrapped__(cfg, tp, pp)
    with torch.device("meta"):
        model = AdaptiveLM(cfg, tp_group=parallel.ShapeOnlyGroup(tp))
    stages = [[p.numel() for i in rng for p in model.layers[i].parameters()] for rng in _stages(cfg, pp)]
    stages[0] = [p.numel() for p in model.embed.parameters()] + stages[0]
    if model.final_norm is not None:
        stages[-1] += [p.numel() for p in model.final_norm.parameters()]
    if pp == 1:
        embed_ids = {id(p) for p in model.embed.parameters()}
        stages[-1] += [p.numel() for p in model.output.parameters() if id(p) not in embed_ids]
    else:
        with torch.device("meta"):
            last = VocabParallelAdaptiveSoftmax(cfg, parallel.ShapeOnlyGroup(tp))
        stages[-1] += [p.numel() for p in last.parameters()]
    return tuple((sum(sizes), max(sum(sizes[a:b]) for a, b in group_bounds(sizes))) for sizes in stages)


def _stages(cfg: ModelConfig, pp: int) -> list[range]:
    return pipeline_stage_layers(cfg.num_layers, pp)


def state_bytes(params: int, layout: TrainLayout) -> tuple[int, int, int, int]:
    """``(weights, grads, optimizer on GPU, optimizer on CPU)`` bytes for ``params`` parameters."""
    w = PRECISION_BYTES[layout.precision]
    dp, zero = layout.dp, layout.zero_stage
    weights = params * w // (dp if zero >= 3 else 1)
    grads = params * w // (dp if zero >= 2 else 1)
    if layout.precision == "bf16" and zero == 0:  # DeepSpeed's BF16_Optimizer also keeps fp32 gradients
        grads += params * FP32
    master = layout.precision != "fp32" or zero >= 1
    per_param = FP32 * (OPTIMIZER_STATES[layout.optimizer] + (1 if master else 0))
    optimizer = params * per_param // (dp if zero >= 1 else 1)
    return (weights, grads, 0, optimizer) if layout.cpu_offload else (weights, grads, optimizer, 0)


def block_activation_bytes_per_token(cfg: ModelConfig, layout: TrainLayout) -> float:
    """Saved bytes per token of one transformer block (without checkpointing).

    On CPU (measured with ``saved_tensors_hooks``, torch 2.13): dropout keeps its scaled noise in the
    activation dtype (not a bool mask), the activation dropout's output is saved beside its input, and
    SDPA has no fused kernel with dropout, so attention dropout takes the math path, which keeps the
    attention probabilities, their dropout noise and the dropped result: ``3 a`` bytes per
    (head, query, key), i.e. ``T`` per token and head: what makes long blocks expensive on CPU.
    """
    a, t, d = PRECISION_BYTES[layout.precision], layout.tp, cfg.embed_dim
    elements = 4 * d + (4 * d + cfg.ffn_dim) / t
    if layout.packed:
        elements += layout.seq_len
    extra = 4 * FP32 + FP32 * cfg.num_heads / t  # LN mean/rstd, attention log-sum-exp
    cpu = layout.device == "cpu"
    if cfg.dropout > 0:
        extra += 2 * d * (a if cpu else 1)  # residual dropout masks
    if cfg.activation_dropout > 0:
        extra += cfg.ffn_dim / t * (2 * a if cpu else 1)
    if cpu and cfg.attention_dropout > 0:
        extra += 3 * a * cfg.num_heads / t * layout.seq_len
    return a * elements + extra


def input_activation_bytes_per_token(cfg: ModelConfig, layout: TrainLayout) -> float:
    """The adaptive input's looked-up band vectors and masks (a full embedding saves only ids)."""
    a = PRECISION_BYTES[layout.precision]
    bands = cfg.input_bands()
    if not cfg.adaptive_input:
        return 8.0
    dropout = cfg.embed_dim * (a if layout.device == "cpu" else 1) if cfg.dropout > 0 else 0
    return sum(a * b.dim + 8 + FP32 + 1 for b in bands) + dropout


def output_activation_bytes_per_token(
    cfg: ModelConfig, layout: TrainLayout, target_fractions: Sequence[float] | None = None
) -> float:
    """The softmax's saved input, logits and exponentials; tails weighted by their share of targets."""
    a, t, d = PRECISION_BYTES[layout.precision], layout.tp, cfg.embed_dim
    bands = cfg.output_bands()
    fractions = target_fractions if target_fractions is not None else zipf_band_fractions(bands)
    per_logit = a + (FP32 if a != FP32 else 0)  # the logits, and their fp32 copy under 16-bit
    total = a * d + per_logit * (-(-bands[0].size // t) + len(bands) - 1)
    for band, share in zip(bands[1:], fractions[1:]):
        total += share * (a * (d + band.dim) + per_logit * -(-band.size // t))
    return total


def stage_activation_bytes(
    cfg: ModelConfig, layout: TrainLayout, stage: int, target_fractions: Sequence[float] | None = None
) -> int:
    """Saved activations of pipeline ``stage`` with all its in-flight micro batches."""
    tokens = layout.micro_batch * layout.seq_len
    layers = len(_stages(cfg, layout.pp)[stage])
    block = block_activation_bytes_per_token(cfg, layout)
    if layout.activation_checkpointing:
        per_token = layers * PRECISION_BYTES[layout.precision] * cfg.embed_dim + block
    else:
        per_token = layers * block
    if stage == 0:
        per_token += input_activation_bytes_per_token(cfg, layout)
    if stage == layout.pp - 1:
        per_token += output_activation_bytes_per_token(cfg, layout, target_fractions)
    return int(per_token * tokens * (layout.pp - stage))


def transient_bytes(params: int, group: int, activations: int, layout: TrainLayout) -> int:
    """DeepSpeed's short-lived buffers beyond the saved activations (module docstring; ``group``: the
    largest param group's elements).

    ZeRO's reduce bucket lives during the backward, beside the activations; the all-reduce copy and the
    step's per-group gradient live after the backward, when the activations are gone, so they count
    only where they exceed them.
    """
    w = PRECISION_BYTES[layout.precision]
    bucket = step = 0
    if layout.zero_stage == 0 and layout.dp > 1:  # the engine's all-reduce flattens the gradients first
        # (at DP = 1 the trainer switches DeepSpeed's all-reduce off: it would copy them all the same)
        step = min(params, DEEPSPEED_ALLREDUCE_ELEMENTS) * w
    if layout.zero_stage in (1, 2):
        step = -(-group // layout.dp) * (w + (FP32 if w != FP32 else 0))
        bucket = min(ZERO_BUCKET_ELEMENTS, params) * FP32
    return max(bucket, step - activations, 0)


def runtime_bytes(cfg: ModelConfig, layout: TrainLayout) -> int:
    """A CPU rank's RSS before the model exists (module docstring); 0 on a GPU."""
    if layout.device != "cpu":
        return 0
    return CPU_RUNTIME_BYTES + DICTIONARY_COPIES * DICTIONARY_BYTES_PER_TYPE * cfg.vocab_size


def plan_stages(
    cfg: ModelConfig, layout: TrainLayout, target_fractions: Sequence[float] | None = None
) -> list[MemoryPlan]:
    """One :class:`MemoryPlan` per pipeline stage."""
    layout.validate(cfg)
    plans = []
    runtime = runtime_bytes(cfg, layout)
    for stage, (params, group) in enumerate(stage_parameter_stats(cfg, layout.tp, layout.pp)):
        weights, grads, optimizer, cpu = state_bytes(params, layout)
        activations = stage_activation_bytes(cfg, layout, stage, target_fractions)
        transient = transient_bytes(params, group, activations, layout)
        plans.append(MemoryPlan(stage, weights, grads, optimizer, activations, cpu, transient, runtime))
    return plans


def plan_memory(cfg: ModelConfig, layout: TrainLayout, target_fractions: Sequence[float] | None = None) -> MemoryPlan:
    """The fullest stage's per-GPU plan: what decides whether the layout fits."""
    return max(plan_stages(cfg, layout, target_fractions), key=lambda plan: plan.total)
