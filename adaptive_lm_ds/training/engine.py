"""One training step and one evaluation pass over a DeepSpeed engine, plain or pipelined.

**Loss normalisation (as fairseq).** The gradient of an update is the gradient of the summed NLL of
all its target tokens — every micro batch on every data-parallel rank — divided by their total
count ``N``. Each rank knows its own micro batches up front, one all-reduce over the data-parallel
group gives ``N``, and each micro batch's summed loss is scaled by ``dp * gas / N`` before DeepSpeed
averages over DP and divides by the accumulation steps. Any layout then computes the same update as
a single process that sees the whole global batch.

**Gradient norm.** The logged ``gnorm`` is the pre-clip L2 norm of the update's full gradient, each
tensor counted once over the TP x PP x DP grid (the quantity ``--clip-norm`` compares against). DeepSpeed's
ZeRO, fp16 and bf16 optimizers compute and keep it; a plain fp32 engine clips with a norm it throws
away, so :func:`clip_fp32_grad_norm` computes it (:func:`grad_norm`) and clips with it instead.

**Non-finite updates.** A non-finite loss makes the gradients non-finite, and a step whose gradient
norm is not finite is skipped before it reaches the weights (``engine.was_step_applied()`` is False; the
caller counts it). DeepSpeed's optimizer wrappers decide that themselves (ZeRO-1/2/3 and bf16: the norm's
validity, fp16: the overflow flag, each one host read per update inside DeepSpeed); on a plain fp32
engine :func:`deepspeed_compat.keep_fp32_grad_norm` makes the same one read and the same skip.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.activation_checkpointing import checkpointing as ds_checkpointing
from deepspeed.runtime.utils import is_model_parallel_parameter

from adaptive_lm_ds import deepspeed_compat, parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.model.lm import AdaptiveLM
from adaptive_lm_ds.model.transformer import TransformerBlock
from adaptive_lm_ds.training.pipeline import build_pipeline_module


def compile_blocks(module: torch.nn.Module) -> None:
    """``torch.compile`` each transformer block's forward (regional compilation, as torchtitan does).

    The blocks share one code object, so one compilation serves all of them; the embedding, the
    adaptive softmax (data-dependent tail routing) and the collectives between stages stay eager.
    Compiling ``forward`` rather than the module keeps DeepSpeed's activation checkpointing outside the
    compiled region: :func:`checkpoint_blocks` (or the pipeline engine) recomputes the compiled forward.
    """
    for block in module.modules():
        if isinstance(block, TransformerBlock):
            block.forward = torch.compile(block.forward)


def checkpoint_blocks(model: AdaptiveLM) -> None:
    """Recompute every transformer block in backward (DeepSpeed's checkpoint restores the RNG states)."""
    for block in model.layers:
        block.forward = types.MethodType(_checkpointed(block.forward), block)


def _checkpointed(forward):
    def run(self, x, mask=None, cache=None):
        if cache is not None:  # incremental decoding: no backward, nothing to recompute
            return forward(x, mask, cache)
        return ds_checkpointing.checkpoint(forward, x, mask)

    return run


def build_module(
    model_cfg: ModelConfig, checkpoint_activations: bool, seed: int, compile: bool = False
) -> torch.nn.Module:
    """``AdaptiveLM`` for this rank's TP shard, or its pipeline stage when PP > 1."""
    dims = parallel.current()
    if dims.pp > 1:  # the pipeline engine applies activation checkpointing itself
        module = build_pipeline_module(model_cfg, dims, checkpoint_activations, seed)
    else:
        module = AdaptiveLM(model_cfg)
    if compile:
        compile_blocks(module)
    if checkpoint_activations and dims.pp == 1:
        checkpoint_blocks(module)
    return module


def grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm (fp64 scalar on the gradients' device) of reduced, unpartitioned gradients, each tensor
    counted once; nothing is read back to the host.

    TP shards count on every TP rank, replicated tensors on TP rank 0 only; a pipeline's non-owner tied
    copies (``ds_pipe_replicated``) not at all; the sum of squares is all-reduced over TP and PP. The
    gradients are already averaged over DP, so DP adds nothing. Squares are summed in fp64 (fp32 norms per
    tensor moved the 20-update fairseq parity at TP2 by 3e-6 bits), in chunks: no fp64 copy of a table.
    """
    dims = parallel.current()
    total = torch.zeros((), dtype=torch.float64, device=parameters[0].device)
    for p in parameters:
        if p.grad is None or deepspeed_compat.is_pipe_replicated(p):
            continue
        if dims.tp_rank == 0 or is_model_parallel_parameter(p):
            for chunk in p.grad.detach().reshape(-1).split(1 << 22):  # fp64 copies of 32 MB, not of a table
                total += chunk.double().square().sum()
    for group in (dims.tp_group, dims.pp_group):
        dist.all_reduce(total, group=group)
    return total.sqrt()


def clip_fp32_grad_norm(engine, parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Pre-clip global grad norm of a plain fp32 engine (no ZeRO, no fp16/bf16 optimizer), after clipping with it.

    DeepSpeed's ``clip_fp32_gradients`` discards the norm it clips with, computes nothing when
    ``gradient_clipping`` is 0, and under a pipeline counts tied tensors twice. This is :func:`grad_norm`,
    run before every optimizer step in its place (:func:`deepspeed_compat.keep_fp32_grad_norm` installs it;
    what it returns, a device scalar, is what ``get_global_grad_norm`` reads), and the gradients are clipped
    with it (fairseq's and DeepSpeed's coefficient ``min(1, max / (norm + 1e-6))``, computed on the device:
    a non-finite norm leaves them as they are; nothing is read back to the host).
    """
    norm = grad_norm(parameters)
    max_norm = engine.gradient_clipping()
    grads = [p.grad for p in parameters if p.grad is not None]
    if max_norm > 0 and grads:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, torch.where(torch.isfinite(norm), coef, torch.ones_like(coef)))
    return norm


@dataclass
class StepResult:
    """One update's numbers. The step reads no metric back from the device: ``loss_sum``, ``gnorm`` (and
    ``ntokens`` when DP > 1) are device scalars until :func:`read_step_results` fetches them (with those of
    the other updates of a log interval) in one transfer. ``applied`` is the engine's host flag."""

    loss_sum: torch.Tensor | float  # summed NLL (nats) of the update's targets, all DP ranks
    ntokens: torch.Tensor | int  # the update's target tokens, all DP ranks
    gnorm: torch.Tensor | float  # pre-clip global gradient norm (nan where the engine keeps none)
    applied: bool  # False when DeepSpeed skipped the step (non-finite gradients / fp16 overflow)
    loss_scale: float  # fp16's dynamic loss scale; 1.0 without loss scaling

    def read(self) -> tuple[float, int, float]:
        """``(loss_sum, ntokens, gnorm)`` as host numbers: one device-to-host copy for all three."""
        (numbers,) = read_step_results([self])
        return numbers


def read_step_results(results: list[StepResult]) -> list[tuple[float, int, float]]:
    """Each result's ``(loss_sum, ntokens, gnorm)`` as host numbers, all of them in one device-to-host copy
    (a ``(3 * len(results),)`` fp64 vector): the trainer reads a log interval's updates at once."""
    if not results:
        return []
    values = [torch.as_tensor(v, dtype=torch.float64) for r in results for v in (r.loss_sum, r.ntokens, r.gnorm)]
    device = next((v.device for v in values if v.device.type != "cpu"), values[0].device)
    flat = torch.stack([v.to(device) for v in values]).tolist()
    return [(flat[i], int(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)]


def _batch_inputs(batch: dict, packed: bool) -> tuple[torch.Tensor, ...]:
    return (batch["tokens"], batch["segment_ids"], batch["targets"]) if packed else (batch["tokens"], batch["targets"])


class Stepper:
    """Runs updates and evaluations on a DeepSpeed engine; hides the plain/pipeline difference.

    Batches arrive as CPU tensors from the data loader; the plain engine's inputs and every tensor this
    class reduces live on ``engine.device`` (a GPU under nccl, the CPU under gloo). The pipeline engine
    moves its own inputs.
    """

    def __init__(self, engine, packed: bool):
        self.engine = engine
        self.packed = packed
        self.pipelined = isinstance(engine, deepspeed.PipelineEngine)
        self.device = engine.device
        dims = parallel.current()
        self.dp_group, self.dp_size = dims.dp_group, dims.dp

    def _global_tokens(self, batches: list[dict]) -> torch.Tensor | int:
        """The target tokens of ``batches`` over all DP ranks: the loader's host count at DP 1, else a device
        scalar (all-reduced over DP, not read back)."""
        local = sum(b["ntokens"] for b in batches)
        if self.dp_size == 1:
            return local
        n = torch.tensor(float(local), dtype=torch.float64, device=self.device)
        dist.all_reduce(n, group=self.dp_group)
        return n

    def _forward(self, batch: dict) -> torch.Tensor:
        """Summed NLL of one micro batch through the plain engine."""
        inputs = (batch["tokens"], batch["targets"], batch.get("segment_ids"))
        loss, _ = self.engine(*(t.to(self.device, non_blocking=True) if t is not None else None for t in inputs))
        return loss

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any (decisions from per-rank clocks must agree)."""
        if dist.get_world_size() == 1:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def train_step(self, batches: list[dict]) -> StepResult:
        """One update from this rank's ``gas`` micro batches; no host sync of its own (:class:`StepResult`)."""
        engine = self.engine
        engine.train()
        ntokens = self._global_tokens(batches)
        scale = self.dp_size * len(batches) / (ntokens.clamp(min=1) if torch.is_tensor(ntokens) else max(ntokens, 1))
        if self.pipelined:
            label = torch.as_tensor(scale, dtype=torch.float32).cpu()
            mean = engine.train_batch(iter([(_batch_inputs(b, self.packed), label) for b in batches]))
            loss_sum = mean.detach().double().reshape(()) * ntokens
        else:
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for b in batches:
                loss = self._forward(b)
                engine.backward(loss * scale)
                engine.step()
                total += loss.detach().double()
            if self.dp_size > 1:
                dist.all_reduce(total, group=self.dp_group)
            loss_sum = total
        gnorm = engine.get_global_grad_norm()
        loss_scale = float(getattr(engine.optimizer, "loss_scale", 1.0)) if engine.fp16_enabled() else 1.0
        return StepResult(loss_sum, ntokens, gnorm if gnorm is not None else float("nan"),
                          engine.was_step_applied(), loss_scale)  # fmt: skip

    @torch.no_grad()
    def eval_loss(self, batches) -> tuple[float, int]:
        """Summed NLL and token count over ``batches`` (this rank's share), totalled over DP; read back once."""
        engine = self.engine
        engine.eval()
        loss_total = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens_total = 0
        for b in batches:
            ntokens = self._global_tokens([b])
            if self.pipelined:
                scale = self.dp_size / (ntokens.clamp(min=1) if torch.is_tensor(ntokens) else max(ntokens, 1))
                label = torch.as_tensor(scale, dtype=torch.float32).cpu()
                mean = engine.eval_batch(iter([(_batch_inputs(b, self.packed), label)]), num_micro_batches=1)
                loss_total += mean.detach().double().reshape(()).to(self.device) * ntokens
            else:
                total = self._forward(b).detach().double()
                if self.dp_size > 1:
                    dist.all_reduce(total, group=self.dp_group)
                loss_total += total
            tokens_total += ntokens
        return float(loss_total), int(tokens_total)
