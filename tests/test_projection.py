"""The step-time projection: compute at the achieved rate plus the transfers that do not overlap."""

import dataclasses
import json

import pytest

from adaptive_lm_ds.comm_model import CommSetting, update_terms, wire_bytes
from adaptive_lm_ds.config import get_preset
from adaptive_lm_ds.projection import DEVICES, project

CFG = get_preset("gbw_huge")
SETTING = CommSetting(dp=16, zero_stage=1, precision="bf16", micro_batch=8, seq_len=512)


def test_data_parallel_across_nodes_costs_its_bytes_at_the_network_bandwidth():
    """Reference: the DP terms' wire bytes over the in-node and the inter-node bandwidth (ZeRO-1 does not overlap)."""
    h100 = DEVICES["h100"]
    in_node = project(CFG, SETTING, h100, efficiency=0.4, gpus_per_node=16)
    across = project(CFG, SETTING, h100, efficiency=0.4, gpus_per_node=8)
    wire = sum(wire_bytes(t, SETTING) for t in update_terms(CFG, SETTING, 0, [[0.0]]) if t.axis == "dp")
    want = wire / h100.inter_node_bytes_per_s - wire / h100.in_node_bytes_per_s
    assert across.step_s - in_node.step_s == pytest.approx(want, rel=1e-9)


def test_a_pipeline_pays_its_fill_and_drain():
    """Reference: 1F1B's bubble, (gas + pp - 1) / gas of the compute."""
    h100 = DEVICES["h100"]
    flat = dataclasses.replace(SETTING, dp=1, gradient_accumulation=4)
    piped = dataclasses.replace(flat, pp=2)
    one = project(CFG, flat, h100, efficiency=0.4, gpus_per_node=8).compute_s
    two = project(CFG, piped, h100, efficiency=0.4, gpus_per_node=8).compute_s
    assert two == pytest.approx(one / 2 * (4 + 1) / 4, rel=1e-9)


def test_zero3_gathers_overlap_with_the_backward_pass():
    h100 = DEVICES["h100"]
    zero3 = dataclasses.replace(SETTING, zero_stage=3)
    hidden = project(CFG, zero3, h100, efficiency=0.4, gpus_per_node=8, overlap_comm=True)
    exposed = project(CFG, zero3, h100, efficiency=0.4, gpus_per_node=8, overlap_comm=False)
    assert hidden.exposed_transfer_s == 0 and hidden.step_s < exposed.step_s


def test_the_step_plan_command_prints_and_writes_the_projection(tmp_path, capsys):
    from adaptive_lm_ds.commands import step_plan

    out = tmp_path / "plan.json"
    argv = ["--preset", "gbw_huge", "--data-parallel-size", "8", "--tensor-model-parallel-size", "2",
            "--micro-batch", "8", "--device", "a100", "--json", str(out)]  # fmt: skip
    assert step_plan.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] == pytest.approx(8 * 512 * 8 / result["step_s"])
    assert {row["axis"] for row in result["transfers"]} == {"tp", "dp"}
    assert "tokens/s" in capsys.readouterr().out
