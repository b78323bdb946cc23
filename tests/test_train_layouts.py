"""Every parallel layout trains exactly like one process (tiny preset, fp32, dropout off, 10 updates).

Reference: a single rank whose micro batch is the whole global batch. Each layout starts from the
same consolidated weights and sees the same samples per update; its per-update losses must match
the reference within 1e-5 relative, and a pipeline's tied tables must be equal on both ends.
"""

import pytest
import torch

from adaptive_lm_ds.testing import run_on_ranks
from adaptive_lm_ds.testing.training import per_token_losses, train_on_rank

UPDATES = 10
SEQS_PER_UPDATE = 4


@pytest.fixture(scope="module")
def setup(tiny_run_setup):
    return tiny_run_setup


def _argv(setup, batch_size, extra):
    data, init = setup
    return [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", str(batch_size),
        "--max-update", str(UPDATES), "--optimizer", "nag", "--lr", "0.05", "--lr-scheduler", "fixed",
        "--warmup-updates", "0", "--clip-norm", "0", "--no-save", "--validate-interval-updates", "0",
        "--max-valid-steps", "1", "--log-interval", "100", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(setup):
    (result,) = run_on_ranks(
        train_on_rank, nprocs=1, argv=_argv(setup, SEQS_PER_UPDATE, ["--deepspeed_config", "ds_configs/zero1.json"])
    )
    return per_token_losses(result)


LAYOUTS = {
    "dp2-zero1": (2, 1, 1, "zero1"),
    "dp2-zero2": (2, 1, 1, "zero2"),
    "dp2-zero3": (2, 1, 1, "zero3"),
    "tp2": (2, 2, 1, "zero1"),
    "pp2": (2, 1, 2, "pipeline_zero1"),
    "tp2-pp2": (4, 2, 2, "pipeline_zero1"),
    "tp2-dp2": (4, 2, 1, "zero1"),
    "pp2-dp2": (4, 1, 2, "pipeline_zero1"),
    "tp2-pp2-dp2": (8, 2, 2, "pipeline_zero1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(setup, reference, name):
    world, tp, pp, ds = LAYOUTS[name]
    dp = world // (tp * pp)
    extra = ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    extra += ["--deepspeed_config", f"ds_configs/{ds}.json"]
    results = run_on_ranks(
        train_on_rank, nprocs=world, timeout=300, argv=_argv(setup, SEQS_PER_UPDATE // dp, extra), report_tied=pp > 1
    )
    for result in results:  # every rank reports the same global losses
        torch.testing.assert_close(per_token_losses(result), reference, rtol=1e-5, atol=0)
    if pp > 1:
        first = [r["tied"] for r in results if r["tied"] and any(k.startswith("tokens.") for k in r["tied"])]
        last = [r["tied"] for r in results if r["tied"] and any(k.startswith("output.") for k in r["tied"])]
        assert first and last
        for a, b in zip(first, last):  # same TP rank order on both ends
            assert len(b) == 5  # tiny: 3 band tables + 2 tail projections are tied
            for key, tensor in b.items():
                torch.testing.assert_close(a["tokens." + key[len("output.") :]], tensor, rtol=0, atol=0)


@pytest.mark.slow
def test_packed_sentences_reach_every_pipeline_stage(setup):
    """Block-diagonal attention in packed mode: PP2 must see the segment ids on both stages."""
    packed = ["--sample-break-mode", "packed", "--deepspeed_config", "ds_configs/pipeline_zero1.json"]
    (single,) = run_on_ranks(train_on_rank, nprocs=1, argv=_argv(setup, SEQS_PER_UPDATE, packed))
    pipelined = run_on_ranks(
        train_on_rank, nprocs=2, timeout=300,
        argv=_argv(setup, SEQS_PER_UPDATE, [*packed, "--pipeline-model-parallel-size", "2"]),
    )  # fmt: skip
    reference = per_token_losses(single)
    for result in pipelined:
        torch.testing.assert_close(per_token_losses(result), reference, rtol=1e-5, atol=0)
