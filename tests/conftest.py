"""Shared pytest fixtures: paths to ../shared (skip with a reason when it is absent)."""

import os
from pathlib import Path

import pytest

from .oracle import SHARED, fairseq_oracle, oracle_data_bin  # noqa: F401  (fixtures, for every test module)

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the ../shared fixtures that CI provides")
    return path


@pytest.fixture
def shared_data() -> Path:
    return _shared_path("data")


@pytest.fixture(scope="session")
def wiki103_tiny_fixture() -> Path:
    return _shared_path("fixtures", "fairseq-wiki103-tiny")


@pytest.fixture
def fairseq_optim_fixture() -> Path:
    return _shared_path("fixtures", "fairseq-optim")


@pytest.fixture(scope="session")
def tiny_run_setup(tmp_path_factory):
    """(data-bin, consolidated initial weights) shared by the training tests: every layout starts from them."""
    from adaptive_lm_ds.testing import run_on_ranks

    from .training_runs import make_data_bin, save_initial_weights

    root = tmp_path_factory.mktemp("tiny-run")
    data = make_data_bin(root / "data")
    run_on_ranks(save_initial_weights, nprocs=1, data_bin=str(data), out_dir=str(root / "init"))
    return data, root / "init"


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_run_setup, tmp_path_factory):
    """A save dir with checkpoint_1 and checkpoint_2 of the tiny fp32 ZeRO-1 run (copy it before damaging it)."""
    from .checkpoint_runs import run_single, train_args

    data, init = tiny_run_setup
    save = tmp_path_factory.mktemp("trained-checkpoint") / "save"
    result = run_single(train_args(data, init, save, 2))
    assert result.returncode == 0, result.output[-3000:]
    return save
