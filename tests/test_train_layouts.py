"""Every parallel layout trains exactly like one process under the recipe users run.

Recipe (the wiki103 launcher's, shrunk): NAG lr 1.0 momentum 0.99, cosine schedule with warmup,
``--clip-norm 0.1`` (gnorm is ~5-10 here, so every update is clipped), ``--update-freq 2``, dropout 0,
fp32; validation mid-run and at the end. Reference: a single process (plain fp32 engine, no ZeRO) seeing
the same global batch per update. Each layout runs twice, in the one launch of its world size's runs: from the
same ``--init-from`` weights (3 blocks, so PP2 splits them unevenly) and from ``--seed`` alone (the
tiny preset), and must give per-update losses and logged gnorm within 1e-5 relative of the reference,
the same validation loss, and, under a pipeline, equal tied tables on both ends afterwards.
"""

import pytest
import torch
from deepspeed.runtime.utils import partition_balanced

from adaptive_lm_ds.model import pipeline_stage_layers
from adaptive_lm_ds.testing import run_on_ranks

from .training_runs import grad_norms, per_token_losses, save_initial_weights, train_runs_on_rank

UPDATES = 5
SEQS_PER_UPDATE = 4  # global: micro batch x DP x update-freq
UPDATE_FREQ = 2
RTOL = 1e-5
INIT_LAYERS = 3


@pytest.fixture(scope="module")
def setup(tiny_run_setup, tmp_path_factory):
    """(data-bin, consolidated 3-block initial weights)."""
    data, _ = tiny_run_setup
    init = tmp_path_factory.mktemp("init-3-blocks")
    run_on_ranks(save_initial_weights, nprocs=1, data_bin=str(data), out_dir=str(init), num_layers=INIT_LAYERS)
    return data, init


def _argvs(setup, dp: int, extra: list[str]) -> list[list[str]]:
    """[from --init-from, from --seed alone] launcher flags for a layout of data-parallel size ``dp``."""
    data, init = setup
    recipe = [
        "--data", str(data), "--tokens-per-sample", "32", "--batch-size", str(SEQS_PER_UPDATE // (dp * UPDATE_FREQ)),
        "--update-freq", str(UPDATE_FREQ), "--max-update", str(UPDATES), "--optimizer", "nag", "--lr", "1.0",
        "--momentum", "0.99", "--lr-scheduler", "cosine", "--warmup-updates", "2", "--warmup-init-lr", "1e-7",
        "--lr-period-updates", "-1", "--clip-norm", "0.1", "--dropout", "0", "--no-save",
        "--validate-interval-updates", "3", "--max-valid-steps", "3", "--log-interval", "100", *extra,
    ]  # fmt: skip
    return [[*recipe, "--init-from", str(init)], [*recipe, "--preset", "tiny", "--seed", "7"]]


def _layout_flags(tp: int, pp: int, ds: str | None) -> list[str]:
    flags = ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    return flags + (["--deepspeed_config", f"ds_configs/{ds}.json"] if ds else [])


def assert_same_training(got: dict, want: dict, what: str) -> None:
    assert got["error"] is None and want["error"] is None, (what, got["error"], want["error"])
    assert len(got["history"]) == UPDATES, what
    torch.testing.assert_close(per_token_losses(got), per_token_losses(want), rtol=RTOL, atol=0, msg=what)
    torch.testing.assert_close(grad_norms(got), grad_norms(want), rtol=RTOL, atol=0, msg=what)
    assert abs(got["summary"]["valid_loss_base2"] / want["summary"]["valid_loss_base2"] - 1) <= RTOL, what


def assert_tied_tables_equal(results: list[dict]) -> None:
    first = [r["tied"] for r in results if r["tied"] and any(k.startswith("embed.") for k in r["tied"])]
    last = [r["tied"] for r in results if r["tied"] and any(k.startswith("output.") for k in r["tied"])]
    assert first and len(first) == len(last)
    for a, b in zip(first, last):  # same TP and DP rank order on both ends
        assert len(b) == 5  # tiny: 3 band tables + 2 tail projections are tied
        for key, tensor in b.items():
            torch.testing.assert_close(a["embed.tokens." + key[len("output.") :]], tensor, rtol=0, atol=0)


# name: (world size, tp, pp, DeepSpeed JSON or None for the plain fp32 engine)
LAYOUTS = {
    "dp2-zero1": (2, 1, 1, "zero1"),
    "dp2-zero2": (2, 1, 1, "zero2"),
    "dp2-zero3": (2, 1, 1, "zero3"),
    "tp2": (2, 2, 1, "zero1"),
    "tp2-zero2": (2, 2, 1, "zero2"),
    "tp2-zero3": (2, 2, 1, "zero3"),
    "pp2": (2, 1, 2, "pipeline_zero1"),
    "tp2-pp2": (4, 2, 2, "pipeline_zero1"),
    "tp2-dp2": (4, 2, 1, None),
    "pp2-dp2": (4, 1, 2, None),
    "tp2-pp2-dp2": (8, 2, 2, "pipeline_zero1"),
}


PACKED = ["--sample-break-mode", "packed"]


def _plan(setup) -> dict[int, dict[str, list[str]]]:
    """Every run this module checks: {world size: {run name: launcher flags}}."""
    init, seed = _argvs(setup, 1, [])
    plan = {1: {"reference/init-from": init, "reference/seed": seed, "packed": _argvs(setup, 1, PACKED)[0]}}
    for name, (world, tp, pp, ds) in LAYOUTS.items():
        init, seed = _argvs(setup, world // (tp * pp), _layout_flags(tp, pp, ds))
        plan.setdefault(world, {}).update({f"{name}/init-from": init, f"{name}/seed": seed})
    pp2 = _layout_flags(1, 2, "pipeline_zero1")
    plan[2]["pp2 checkpointed"] = _argvs(setup, 1, [*pp2, "--checkpoint-activations"])[0]
    plan[2]["packed pp2"] = _argvs(setup, 1, [*PACKED, *pp2])[0]
    return plan


@pytest.fixture(scope="module")
def runs(setup):
    """{run name: every rank's result}: a world size's runs are made in turn in one launch (one start-up for
    them all; each run builds its own process groups and engine), on first use of one of them."""
    plan, made = _plan(setup), {}

    def get(name: str) -> list[dict]:
        if name not in made:
            world = next(w for w, named in plan.items() if name in named)
            ranks = run_on_ranks(train_runs_on_rank, nprocs=world, timeout=1800, argvs=list(plan[world].values()),
                                 report_tied=True)  # fmt: skip
            made.update({run: [rank_runs[i] for rank_runs in ranks] for i, run in enumerate(plan[world])})
        return made[name]

    return get


@pytest.fixture(scope="module")
def reference(runs):
    """Single process, plain fp32 engine: [init-from run, seed run]."""
    return [runs("reference/init-from")[0], runs("reference/seed")[0]]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(runs, reference, name):
    pp = LAYOUTS[name][2]
    for mode, want in zip(("init-from", "seed"), reference):
        ranks = runs(f"{name}/{mode}")
        for got in ranks:  # every rank reports the same global numbers
            assert_same_training(got, want, f"{name} from {mode}, rank layout {got['layout']}")
        if pp > 1:
            assert_tied_tables_equal(ranks)


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_stage_split_is_deepspeeds_partition(pp):
    """``pipeline_stage_layers`` (evaluation's and the summary's split) = the training pipeline's.

    Reference: DeepSpeed's ``partition_balanced`` over the layer specs as ``type:TransformerBlockPipe``
    weighs them (embedding, L blocks, output -> 0, 1 x L, 0).
    """
    for layers in range(pp, 13):
        parts = [int(x) for x in partition_balanced([0] + [1] * layers + [0], pp)]
        want = [range(max(a, 1) - 1, min(b, layers + 1) - 1) for a, b in zip(parts, parts[1:])]
        assert pipeline_stage_layers(layers, pp) == want, layers


@pytest.mark.slow
def test_uneven_pipeline_with_activation_checkpointing(runs, reference):
    """3 blocks on 2 stages split as ``pipeline_stage_layers`` says; recomputation changes nothing."""
    ranks = runs("pp2 checkpointed")
    split = pipeline_stage_layers(INIT_LAYERS, 2)
    assert sorted(tuple(r["blocks"]) for r in ranks) == [tuple(split[0]), tuple(split[1])]
    for got in ranks:
        assert_same_training(got, reference[0], "pp2 with --checkpoint-activations")


@pytest.mark.slow
def test_packed_sentences_reach_every_pipeline_stage(runs):
    """Block-diagonal attention in packed mode: PP2 must see the segment ids on both stages."""
    (single,) = runs("packed")
    for got in runs("packed pp2"):
        assert_same_training(got, single, "packed pp2")
