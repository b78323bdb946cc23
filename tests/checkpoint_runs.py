"""Shared by the checkpoint tests: the launcher flags of a tiny run and a one-process launch."""

import sys

from adaptive_lm_ds.testing.distributed import free_port, launch, rank_env
from tests.oracle import REPO

LAUNCHER = REPO / "launchers" / "train_wiki103.py"
MODEL = "mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def train_args(data, init, save, max_update, *extra):
    """A tiny fp32 ZeRO-1 run that saves after every update and keeps every checkpoint."""
    return [
        "--data", data, "--init-from", init, "--tokens-per-sample", "32", "--batch-size", "2",
        "--max-update", str(max_update), "--lr", "0.05", "--warmup-updates", "0", "--lr-scheduler", "fixed",
        "--save-dir", save, "--save-interval-updates", "1", "--keep-last-n", "-1", "--log-format", "json",
        "--log-interval", "1", "--validate-interval-updates", "0", "--max-valid-steps", "1",
        "--deepspeed_config", "ds_configs/zero1.json", *extra,
    ]  # fmt: skip


def run_single(args, script=LAUNCHER, timeout=240):
    """One plain ``python`` process (a world of one), as a user runs it: exit code and all output."""
    env = rank_env({"MASTER_PORT": str(free_port())})
    return launch([sys.executable, str(script), *map(str, args)], timeout=timeout, env=env)
