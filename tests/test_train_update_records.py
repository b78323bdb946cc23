"""The per-update records the trainer hands out at its log interval, and the plain fp32 engine's skip."""

import pytest
import torch

from adaptive_lm_ds.testing import run_on_ranks

from .training_runs import per_token_losses, train_on_rank, train_runs_on_rank


def _argv(setup, tmp_path, *extra):
    data, init = setup
    return [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "4",
        "--max-update", "5", "--lr", "0.1", "--optimizer", "nag", "--clip-norm", "0.1", "--no-save",
        "--save-dir", str(tmp_path / "save"), "--validate-interval-updates", "0", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_records_read_at_the_log_interval_equal_those_read_every_update(tiny_run_setup, tmp_path):
    # the same run read back after every update (interval 1) and three updates at a time (5 = 3 + a flush)
    argvs = [_argv(tiny_run_setup, tmp_path, "--log-interval", str(n)) for n in (1, 3)]
    (runs,) = run_on_ranks(train_runs_on_rank, nprocs=1, argvs=argvs)
    every_update, per_interval = runs
    assert [h["update"] for h in per_interval["history"]] == [1, 2, 3, 4, 5]
    for a, b in zip(every_update["history"], per_interval["history"], strict=True):
        a, b = dict(a), dict(b)
        a_extra, b_extra = a.pop("extra"), b.pop("extra")
        assert a == b  # loss, tokens, gnorm, lr, epoch: the same numbers, bit for bit
        assert a_extra["clip"] == b_extra["clip"] and a_extra["loss_scale"] == b_extra["loss_scale"]


@pytest.mark.slow
def test_plain_fp32_engine_skips_non_finite_updates_and_keeps_finite_weights(tiny_run_setup, tmp_path):
    # no --deepspeed_config: the plain fp32 engine, whose client optimizer would apply a NaN gradient
    argv = _argv(tiny_run_setup, tmp_path, "--max-update", "4", "--log-interval", "3")
    (result,) = run_on_ranks(train_on_rank, nprocs=1, argv=argv, poison_updates=(2, 3))
    assert result["error"] is None
    assert [h["update"] for h in result["history"]] == [1, 2, 3, 4]  # 6 attempts, 2 skipped
    losses = per_token_losses(result)
    assert torch.isfinite(losses).all()  # the weights after the skipped attempts are still finite
    assert torch.isfinite(torch.tensor(result["summary"]["valid_loss_base2"]))  # validated on finite weights
