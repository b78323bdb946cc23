"""The memory planner against measured allocations of small layouts on CPU (within 10%).

Measured: parameter, gradient and optimizer-state bytes summed over the real tensors after a real
training step (plain torch, and DeepSpeed ZeRO on 2 ranks); activations as the bytes of the distinct
storages autograd saves for backward in a forward pass (``saved_tensors_hooks``), parameters excluded.
"""

import dataclasses

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ConfigError, ModelConfig, default_cutoffs
from adaptive_lm_ds.flops import band_fractions
from adaptive_lm_ds.memory import MemoryPlanError, TrainLayout, plan_memory, plan_stages
from adaptive_lm_ds.model import AdaptiveLM
from adaptive_lm_ds.optim.config import OptimConfig
from adaptive_lm_ds.optim.optimizers import build_optimizer
from adaptive_lm_ds.parallel import ParallelDims
from adaptive_lm_ds.testing import run_on_ranks

from .saved_tensors import saved_tensor_bytes

VOCAB, BATCH, LENGTH = 4000, 4, 64


def small_config() -> ModelConfig:
    cutoffs = default_cutoffs(VOCAB)
    return ModelConfig(
        vocab_size=VOCAB,
        embed_dim=128,
        ffn_dim=512,
        num_layers=2,
        num_heads=4,
        dropout=0.0,
        adaptive_input_cutoffs=cutoffs,
        adaptive_softmax_cutoffs=cutoffs,
        tie_adaptive_weights=True,
    )


def batch(packed: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens, targets = (torch.randint(4, VOCAB, (BATCH, LENGTH), generator=g) for _ in range(2))
    segments = (torch.arange(LENGTH) * 3 // LENGTH).expand(BATCH, LENGTH) if packed else None
    return tokens, targets, segments


def saved_activation_bytes(model: AdaptiveLM, tokens, targets, segments) -> int:
    """Bytes of the distinct non-parameter storages saved for backward by one forward + loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    _, saved = saved_tensor_bytes(lambda: model(tokens, targets, segments), params)
    return saved


def target_shares(cfg: ModelConfig, targets: torch.Tensor) -> list[float]:
    return band_fractions(cfg.output_bands(), torch.bincount(targets.flatten(), minlength=cfg.vocab_size))


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _measure_activations(cfg: ModelConfig, tp: int, packed: bool, device: str = "gpu") -> tuple[int, int]:
    tokens, targets, segments = batch(packed)
    model = AdaptiveLM(cfg)
    layout = TrainLayout(
        dims=ParallelDims(tp=tp),
        micro_batch=BATCH,
        seq_len=LENGTH,
        precision="fp32",
        packed=packed,
        device=device,
    )
    planned = plan_memory(cfg, layout, target_shares(cfg, targets)).activations
    return saved_activation_bytes(model, tokens, targets, segments), planned


@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_activations_match_saved_tensors(packed):
    with parallel.single_process():
        measured, planned = _measure_activations(small_config(), 1, packed)
    assert planned == pytest.approx(measured, rel=0.10)


def test_cpu_activations_with_every_dropout_match_saved_tensors():
    """On CPU dropout saves float noise and attention dropout takes SDPA's math path (T per token and head)."""
    cfg = dataclasses.replace(small_config(), dropout=0.3, attention_dropout=0.1, activation_dropout=0.1)
    with parallel.single_process():
        measured, planned = _measure_activations(cfg, 1, packed=False, device="cpu")
    assert planned == pytest.approx(measured, rel=0.10)


def test_states_match_a_real_nag_step_without_zero():
    cfg = small_config()
    with parallel.single_process():
        model = AdaptiveLM(cfg)
        optimizer = build_optimizer(OptimConfig(optimizer="nag", lr=0.1), model.parameters())
        tokens, targets, _ = batch(False)
        loss, _ = model(tokens, targets)
        loss.backward()
        optimizer.step()
        params = list(model.parameters())
        measured = (
            tensor_bytes(params),
            tensor_bytes(p.grad for p in params),
            tensor_bytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)),
        )
    plan = plan_memory(cfg, TrainLayout(precision="fp32", optimizer="nag"))
    assert (plan.params, plan.grads, plan.optimizer) == pytest.approx(measured, rel=0.10)


def _two_ranks(zero_stages):
    """TP2 activations and parameter bytes, then DP2 ZeRO optimizer partitions, measured on this rank."""
    import deepspeed

    cfg = small_config()
    out = {}
    parallel.initialize_parallel(ParallelDims(tp=2))
    try:
        out["tp2_activations"] = _measure_activations(cfg, 2, packed=False)
        out["tp2_params"] = tensor_bytes(AdaptiveLM(cfg).parameters())
    finally:
        parallel.destroy_parallel()
    for stage in zero_stages:
        parallel.initialize_parallel(ParallelDims(dp=2))
        try:
            model = AdaptiveLM(cfg)
            ds_config = {
                "train_micro_batch_size_per_gpu": 1,
                "zero_optimization": {"stage": stage},
                "zero_allow_untested_optimizer": True,
            }
            engine, optimizer, _, _ = deepspeed.initialize(
                model=model,
                optimizer=build_optimizer(OptimConfig(optimizer="nag", lr=0.1), model.parameters()),
                config=ds_config,
            )
            tokens, targets, _ = batch(False, seed=dist_rank())
            loss, _ = engine(tokens, targets)
            engine.backward(loss)
            engine.step()
            master = tensor_bytes(optimizer.single_partition_of_fp32_groups)
            states = tensor_bytes(
                t for s in optimizer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
            )
            out[f"zero{stage}_optimizer"] = master + states
        finally:
            parallel.destroy_parallel()
    return out


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def test_two_rank_layouts_match_measurements():
    results = run_on_ranks(_two_ranks, nprocs=2, timeout=240, zero_stages=(1, 2))
    cfg = small_config()
    tp2 = plan_memory(cfg, TrainLayout(dims=ParallelDims(tp=2), precision="fp32"))
    for rank in results:
        measured, planned = rank["tp2_activations"]
        assert planned == pytest.approx(measured, rel=0.10)
        assert tp2.params == pytest.approx(rank["tp2_params"], rel=0.10)
        for stage in (1, 2):
            plan = plan_memory(
                cfg, TrainLayout(dims=ParallelDims(dp=2), zero_stage=stage, precision="fp32", optimizer="nag")
            )
            assert plan.optimizer == pytest.approx(rank[f"zero{stage}_optimizer"], rel=0.10)


def test_zero_shards_states_over_data_parallel_ranks():
    cfg = small_config()
    base = plan_memory(cfg, TrainLayout(precision="bf16", optimizer="adam"))
    zero3 = plan_memory(cfg, TrainLayout(dims=ParallelDims(dp=4), zero_stage=3, precision="bf16", optimizer="adam"))
    # ZeRO paper: 2 + 2 + 12 bytes per parameter, all divided by the DP size at stage 3; without ZeRO
    # DeepSpeed's BF16_Optimizer adds a flat fp32 gradient buffer (bf16_optimizer.py, "create fp32 gradients").
    assert base.params + base.grads + base.optimizer == pytest.approx((16 + 4) * base.params / 2, rel=1e-6)
    assert zero3.params + zero3.grads + zero3.optimizer == pytest.approx(16 * base.params / 2 / 4, rel=1e-3)


def test_pipeline_first_stage_holds_most_micro_batches():
    cfg = small_config().replace(num_layers=4)
    stages = plan_stages(cfg, TrainLayout(dims=ParallelDims(pp=2), micro_batch=BATCH, seq_len=LENGTH, precision="fp32"))
    single = plan_memory(cfg, TrainLayout(micro_batch=BATCH, seq_len=LENGTH, precision="fp32"))
    assert stages[0].activations > stages[1].activations
    assert sum(s.params for s in stages) > single.params  # the last stage's own copy of the tied tables


def test_bad_layouts_are_rejected_with_a_reason():
    with pytest.raises(MemoryPlanError, match="ZeRO stage 0 or 1"):
        plan_memory(small_config().replace(num_layers=4), TrainLayout(dims=ParallelDims(pp=2), zero_stage=2))
    with pytest.raises(MemoryPlanError, match="CPU offload needs ZeRO"):
        plan_memory(small_config(), TrainLayout(cpu_offload=True))
    with pytest.raises(ConfigError, match="num_heads=4 is not divisible"):
        plan_memory(small_config(), TrainLayout(dims=ParallelDims(tp=8)))


def _memory_plan(*args: str) -> list[str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "tools/memory_plan.py", *args], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.startswith(("TP", "1 GPU", "8 GPU"))]


def test_memory_plan_marks_what_does_not_fit_and_prints_each_layout_once():
    rows = _memory_plan("--preset", "gbw_huge", "--memory-gb", "16", "--search", "1,8", "--device", "gpu")
    assert rows[0].startswith("TP1 PP1 DP1 ZeRO-0") and rows[0].endswith("NO")  # 24 GB planned > 90% of 16
    layouts = [row.split("  ")[0].split(": ")[-1] for row in rows]
    assert len(layouts) == len(set(layouts))  # no layout's row twice
    assert all(row.endswith(("yes", "NO", "(row above)")) for row in rows)


def test_memory_plan_takes_trainings_checkpoint_activations_flag():
    from adaptive_lm_ds.commands.memory_plan import COLUMNS

    plain, recomputed = (
        _memory_plan("--preset", "wiki103", "--seq-len", "3072", "--micro-batch", "1", *flag)[0]
        for flag in ((), ("--checkpoint-activations",))
    )
    assert recomputed.startswith("TP1 PP1 DP1 ZeRO-0 ckpt") and not plain.startswith("TP1 PP1 DP1 ZeRO-0 ckpt")
    activations = [float(row[46:].split()[COLUMNS.index("activations")]) for row in (plain, recomputed)]
    assert activations[1] < activations[0]
