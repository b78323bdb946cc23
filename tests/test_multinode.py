"""Two simulated nodes (torchrun --nnodes 2 on loopback) train a TP2 x DP2 layout like one process."""

import json

import pytest

from adaptive_lm_ds import logs
from adaptive_lm_ds.testing.distributed import run_script, run_script_multinode
from tests.oracle import REPO

LAUNCHER = REPO / "launchers" / "train_wiki103.py"


def _losses(output):
    lines = [json.loads(m) for m in map(logs.message, output.splitlines()) if m.startswith("{") and '"wps"' in m]
    return [line["loss"] for line in lines]


@pytest.mark.slow
def test_two_nodes_train_tp2_dp2_like_one_process(tiny_run_setup):
    data, init = tiny_run_setup
    common = [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32",
        "--max-update", "5", "--lr", "0.05", "--lr-scheduler", "fixed", "--warmup-updates", "0", "--no-save",
        "--validate-interval-updates", "0", "--max-valid-steps", "1", "--log-interval", "1", "--log-format", "json",
        "--deepspeed_config", "ds_configs/zero1.json",
    ]  # fmt: skip
    nodes = run_script_multinode(LAUNCHER, [*common, "--batch-size", "2", "--tensor-model-parallel-size", "2"])
    assert "layout TP2 x PP1 x DP2" in nodes[0].output  # global rank 0 lives on node 0 and reports
    reference = run_script(LAUNCHER, [*common, "--batch-size", "4"], nprocs=1).output
    two_nodes, single = _losses(nodes[0].output), _losses(reference)
    assert len(two_nodes) == 5
    assert two_nodes == pytest.approx(single, rel=1e-5)
