"""Training features: tensorboard scalars, bf16 on CPU, activation checkpointing, non-finite losses."""

import json

import pytest
import torch
import torch.distributed as dist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adaptive_lm_ds.testing import run_on_ranks
from adaptive_lm_ds.training.preflight import fp16_supported

from .training_runs import per_token_losses, train_on_rank, train_runs_on_rank


@pytest.fixture(scope="module")
def setup(tiny_run_setup):
    return tiny_run_setup


def _argv(setup, tmp_path, *extra):
    data, init = setup
    return [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "4",
        "--max-update", "6", "--lr", "0.1", "--lr-scheduler", "fixed", "--warmup-updates", "0",
        "--save-dir", str(tmp_path / "save"), "--validate-interval-updates", "3", "--max-valid-steps", "2",
        "--log-interval", "2", "--deepspeed_config", "ds_configs/zero1.json", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_tensorboard_has_every_scalar_a_user_watches(setup, tmp_path):
    logdir = tmp_path / "tb"
    (result,) = run_on_ranks(
        train_on_rank, nprocs=1, argv=_argv(setup, tmp_path, "--tensorboard-logdir", str(logdir), "--peak-tflops", "1")
    )
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    wanted = {"loss", "ppl", "lr", "gnorm", "loss_scale", "wps", "step_time", "mfu", "tflops_per_rank", "memory_gb"}
    assert {f"train/{t}" for t in wanted} <= tags
    assert {"valid/loss", "valid/ppl"} <= tags
    # the logged loss of updates 1-2 is the token-weighted base-2 mean of the trainer's own history
    history = result["history"][:2]
    expected = sum(h["loss_sum"] for h in history) / sum(h["ntokens"] for h in history) / torch.log(torch.tensor(2.0))
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged[2] == pytest.approx(float(expected), rel=1e-6)
    # gnorm: the interval's mean pre-clip norm; clip (default --clip-norm 0.1): % of its updates clipped
    norms = [h["gnorm"] for h in history]
    assert {e.step: e.value for e in events.Scalars("train/gnorm")}[2] == pytest.approx(sum(norms) / 2, rel=1e-6)
    clipped = 100.0 * sum(n > 0.1 for n in norms) / 2
    assert {e.step: e.value for e in events.Scalars("train/clip")}[2] == pytest.approx(clipped)


@pytest.fixture(scope="module")
def fp32_losses(setup, tmp_path_factory):
    """Per-token losses of the plain fp32 eager run: the reference of the precision and compile tests."""
    argv = _argv(setup, tmp_path_factory.mktemp("fp32"), "--no-save")
    return per_token_losses(run_on_ranks(train_on_rank, nprocs=1, argv=argv)[0])


@pytest.mark.slow
def test_bf16_training_on_cpu_tracks_fp32(setup, tmp_path, fp32_losses):
    argvs = [
        _argv(setup, tmp_path, "--no-save", "--deepspeed_config", "ds_configs/zero1_bf16.json"),
        _argv(setup, tmp_path, "--no-save", "--max-update", "0"),  # the initial weights, scored
    ]
    result, initial = run_on_ranks(train_runs_on_rank, nprocs=1, argvs=argvs)[0]
    bf16 = per_token_losses(result)
    assert torch.isfinite(bf16).all()
    assert all(h["gnorm"] > 0 and torch.isfinite(torch.tensor(h["gnorm"])) for h in result["history"])
    # it learns: the same validation batches score better than the initial weights (one batch's training
    # loss against another's is batch noise at 6 clipped updates)
    assert result["summary"]["valid_loss_base2"] < initial["summary"]["valid_loss_base2"]
    torch.testing.assert_close(bf16, fp32_losses, rtol=2e-2, atol=0)  # bf16 rounding, not a different model


def _train_compiled_on_rank(argvs: list[list[str]]) -> list[dict]:
    """Rank-side: :func:`train_on_rank` for each ``argv`` in turn, each from a fresh dynamo (nothing compiled
    reused in memory; inductor's on-disk kernels may be), with ``compiled_graphs``: the graphs dynamo made."""
    from torch._dynamo.utils import counters

    runs = []
    for argv in argvs:
        torch._dynamo.reset()
        before = counters["stats"]["unique_graphs"]
        runs.append({**train_on_rank(argv), "compiled_graphs": counters["stats"]["unique_graphs"] - before})
    return runs


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_with_and_without_activation_checkpointing(
    setup, tmp_path, monkeypatch, fp32_losses
):
    inductor_cache = tmp_path / "inductor"  # the rank's compiled kernels land here: proof that it compiled
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    variants = {"compiled": (), "compiled+checkpointed": ("--checkpoint-activations",)}
    argvs = [_argv(setup, tmp_path, "--no-save", "--compile", *extra) for extra in variants.values()]
    (runs,) = run_on_ranks(_train_compiled_on_rank, nprocs=1, argvs=argvs)
    assert any(inductor_cache.rglob("*.py"))
    for name, result in zip(variants, runs):
        assert result["error"] is None, (name, result["error"])
        assert result["compiled_graphs"] > 0, name
        # the same maths, fused by inductor: only float rounding differs from eager
        torch.testing.assert_close(per_token_losses(result), fp32_losses, rtol=1e-5, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not fp16_supported(), reason="this CPU has no fp16 support in DeepSpeed's accelerator (oneDNN)")
def test_fp16_loss_scaling_skips_overflowing_steps_then_trains(setup, tmp_path):
    ds = tmp_path / "fp16.json"  # start at 2**30: the first steps overflow until DeepSpeed halves the scale enough
    fp16 = {"enabled": True, "loss_scale": 0, "initial_scale_power": 30, "hysteresis": 1}
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "fp16": fp16}))
    (result,) = run_on_ranks(
        train_on_rank, nprocs=1, argv=_argv(setup, tmp_path, "--no-save", "--deepspeed_config", str(ds))
    )
    assert result["error"] is None
    assert result["skipped_overflow"] > 0  # overflow steps are loss-scale adjustments, not failures
    losses = per_token_losses(result)
    assert len(losses) == 6 and torch.isfinite(losses).all() and losses[-1] < losses[0]


def _grads_with_and_without_checkpointing(seed):
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.model.lm import AdaptiveLM
    from adaptive_lm_ds.training.engine import checkpoint_blocks

    cfg = get_preset("tiny", vocab_size=211, dropout=0.2, attention_dropout=0.2, activation_dropout=0.2)
    parallel.initialize_parallel(parallel.ParallelDims.for_world(dist.get_world_size(), tp=dist.get_world_size()), seed)
    tokens = torch.randint(4, 211, (2, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointed in (False, True):
        parallel.destroy_parallel()
        parallel.initialize_parallel(
            parallel.ParallelDims.for_world(dist.get_world_size(), tp=dist.get_world_size()), seed
        )
        model = AdaptiveLM(cfg).train()
        if checkpointed:
            checkpoint_blocks(model)
        loss, _ = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    parallel.destroy_parallel()
    return grads


@pytest.mark.slow
def test_activation_checkpointing_gives_equal_gradients_with_tp_dropout():
    for plain, checkpointed in run_on_ranks(_grads_with_and_without_checkpointing, nprocs=2, seed=5):
        assert plain.keys() == checkpointed.keys()
        for name in plain:  # recomputation replays the same dropout masks on every TP rank
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_non_finite_losses_are_skipped(setup, tmp_path):
    (result,) = run_on_ranks(train_on_rank, nprocs=1, argv=_argv(setup, tmp_path, "--no-save"), poison_updates=(3, 4))
    assert result["error"] is None
    assert [h["update"] for h in result["history"]] == [1, 2, 3, 4, 5, 6]  # 8 attempts, 2 skipped
    assert torch.isfinite(per_token_losses(result)).all()


@pytest.mark.slow
def test_too_many_non_finite_losses_abort_with_last_good_checkpoint(setup, tmp_path):
    argv = _argv(setup, tmp_path, "--save-interval-updates", "2", "--max-consecutive-nan", "3")
    (result,) = run_on_ranks(train_on_rank, nprocs=1, argv=argv, poison_updates=(5, 6, 7, 8))
    assert result["error"].startswith("TrainingAborted: 3 updates in a row had non-finite loss")
    assert (tmp_path / "save" / "latest").read_text().strip() == "checkpoint_4"
    assert (tmp_path / "save" / "checkpoint_4" / ".complete").is_file()


def _train_with_a_fast_clock_on_rank_1(argv):
    """The trainer's clock ticks 1 s per reading on rank 0 and 2 s on rank 1: their time limits differ."""
    import itertools
    import time
    import types

    from adaptive_lm_ds.training import trainer

    ticks = itertools.count(step=1 + dist.get_rank())
    trainer.time = types.SimpleNamespace(monotonic=lambda: float(next(ticks)), perf_counter=time.perf_counter)
    return train_on_rank(argv)


@pytest.mark.slow
def test_time_limit_stops_every_rank_at_the_same_update(setup, tmp_path):
    # limit 5 s: rank 1 reads 2, 4, 6 and is out of time after 2 updates, rank 0 (1, 2, ..., 6) after 5;
    # if each rank stopped on its own clock, rank 0 would train on alone and its collectives would never match
    argv = _argv(setup, tmp_path, "--no-save", "--stop-time-hours", str(5 / 3600))
    results = run_on_ranks(_train_with_a_fast_clock_on_rank_1, nprocs=2, timeout=120, argv=argv)
    assert [r["error"] for r in results] == [None, None]
    assert [len(r["history"]) for r in results] == [2, 2]
