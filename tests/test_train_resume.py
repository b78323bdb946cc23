"""Checkpoints: a run killed with SIGKILL and rerun reaches bit-identical losses; bad resumes fail clearly."""

import json
import shutil

import pytest

from adaptive_lm_ds import logs
from adaptive_lm_ds.testing import RankFailure, run_on_ranks, run_script
from adaptive_lm_ds.testing.distributed import run_script_until_killed
from tests.oracle import REPO

from .training_runs import make_data_bin, save_initial_weights

LAUNCHER = REPO / "launchers" / "train_wiki103.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_bin(tmp_path_factory.mktemp("resume") / "data")


def _args(data, save_dir, max_update=12):
    return [
        "--data", data, "--preset", "tiny", "--dropout", "0.1", "--attention-dropout", "0.1",
        "--tokens-per-sample", "32", "--batch-size", "2", "--max-update", str(max_update),
        "--lr", "0.05", "--warmup-updates", "3", "--lr-period-updates", "-1", "--save-dir", save_dir,
        "--save-interval-updates", "4", "--log-format", "json", "--log-interval", "1",
        "--validate-interval-updates", "0", "--max-valid-steps", "1",
        "--deepspeed_config", "ds_configs/zero1.json", "--tensor-model-parallel-size", "2",
    ]  # fmt: skip


def _losses(output):
    messages = map(logs.message, output.splitlines())
    records = [json.loads(m) for m in messages if m.startswith("{") and '"update"' in m]
    return {r["update"]: r["loss"] for r in records if "wps" in r}  # training lines only


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(data, tmp_path):
    straight = _losses(run_script(LAUNCHER, _args(data, tmp_path / "a"), nprocs=2).output)
    assert sorted(straight) == list(range(1, 13))

    before = _losses(run_script_until_killed(LAUNCHER, _args(data, tmp_path / "b"), '"update": 6,', nprocs=2))
    assert (tmp_path / "b" / "latest").read_text().strip() == "checkpoint_4"
    resumed_out = run_script(LAUNCHER, _args(data, tmp_path / "b"), nprocs=2).output
    assert "resumed from checkpoint_4 at update 4" in resumed_out
    after = _losses(resumed_out)
    assert sorted(after) == list(range(5, 13))
    assert {u: before[u] for u in range(1, 7)} == {u: straight[u] for u in range(1, 7)}
    assert after == {u: straight[u] for u in range(5, 13)}  # exact equality, dropout included


def _expect_error(args, needle, nprocs=1):
    with pytest.raises(RankFailure) as info:
        run_script(LAUNCHER, args, nprocs=nprocs, timeout=180)
    assert needle in str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    save = tmp_path_factory.mktemp("trained") / "save"
    run_script(LAUNCHER, _args(data, save, max_update=4)[:-2] + ["--tensor-model-parallel-size", "1"], nprocs=1)
    return save


def _single_rank_args(data, save, **extra):
    args = _args(data, save, max_update=6)[:-2] + ["--tensor-model-parallel-size", "1"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.mark.slow
def test_resume_with_another_model_config_is_refused(data, trained, tmp_path):
    other = run_on_ranks(
        save_initial_weights, nprocs=1, data_bin=str(data), out_dir=str(tmp_path / "init3"), num_layers=3
    )[0]
    save = tmp_path / "copy"
    shutil.copytree(trained, save)
    _expect_error(_single_rank_args(data, save, init_from=other), "trained with another model config")


@pytest.mark.slow
def test_reset_optimizer_keeps_the_weights_and_restarts_the_count(data, trained, tmp_path):
    save = tmp_path / "reset"
    shutil.copytree(trained, save)
    args = _single_rank_args(data, save)
    args[args.index("--max-update") + 1] = "5"
    out = run_script(LAUNCHER, [*args, "--reset-optimizer"], nprocs=1).output
    assert "resumed from checkpoint_4 at update 0" in out
    assert sorted(_losses(out)) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused(data, trained, tmp_path):
    save = tmp_path / "corrupt"
    shutil.copytree(trained, save)
    for state in (save / "checkpoint_4").glob("mp_rank_*_model_states.pt"):
        state.write_bytes(state.read_bytes()[:100])
    _expect_error(_single_rank_args(data, save), "cannot load checkpoint")


@pytest.mark.slow
def test_missing_restore_file_is_refused(data, tmp_path):
    _expect_error(_single_rank_args(data, tmp_path / "empty", restore_file="checkpoint_99"), "no complete checkpoint")


@pytest.mark.slow
def test_world_size_that_does_not_fit_the_layout_is_refused(data, tmp_path):
    args = _args(data, tmp_path / "x")[:-2] + [
        "--tensor-model-parallel-size",
        "2",
        "--pipeline-model-parallel-size",
        "2",
    ]
    _expect_error(args, "not divisible by tp*pp", nprocs=2)
