"""tools/model_summary.py: totals from the meta-device model, per-rank counts of a TP x PP layout."""

import json
import subprocess
import sys

from adaptive_lm_ds.testing.distributed import rank_env
from tests.oracle import REPO


def _summary(*args):
    out = subprocess.run(
        [sys.executable, "tools/model_summary.py", *args],
        cwd=REPO,
        env=rank_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out


def test_json_counts_for_tp2_pp2_match_the_shapes_by_hand():
    out = _summary(
        "--preset",
        "tiny",
        "--vocab-size",
        "400",
        "--tensor-model-parallel-size",
        "2",
        "--pipeline-model-parallel-size",
        "2",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    d, f, tp = 64, 128, 2
    tables = 40 * 64 + 120 * 16 + 240 * 4  # tiny's default cutoffs for V = 400: 40, 160
    projs = d * (64 + 16 + 4)
    clusters = 2 * d
    block_total = 4 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)
    assert summary["total_params"] == tables + projs + 2 * block_total + clusters
    block_rank = 4 * d + 3 * (d * d + d) // tp + d * d // tp + d + (d * f + f) // tp + f * d // tp + d
    tied_tail_projs = d * (16 + 4)  # the last stage's own copy of the tied tail projections
    stage0 = tables // tp + projs + block_rank
    stage1 = block_rank + tables // tp + tied_tail_projs + clusters
    assert summary["per_rank_params"] == [stage0, stage0, stage1, stage1]


def test_bad_layout_exits_with_a_one_line_reason():
    out = _summary("--preset", "wiki103", "--tensor-model-parallel-size", "3")
    assert out.returncode != 0
    assert "num_heads=8 is not divisible by the tensor-parallel size 3" in out.stderr.strip().splitlines()[-1]
