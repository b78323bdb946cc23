"""A run interrupted in one layout and resumed in another trains exactly like one uninterrupted process.

Recipe (the layout tests'): NAG lr 1.0 momentum 0.99, cosine schedule with 4 warmup updates, ``--clip-norm
0.1``, dropout 0, fp32, 4 sequences per update (DP1 ``--update-freq 2`` = DP2 ``--update-freq 1``). Reference:
one process (plain fp32 engine) running all ``UPDATES``. Phase A: layout A runs the same command and saves at
update ``HALF``; phase B: layout B resumes from that checkpoint (``--restore-file``) and runs to the end. Its
updates ``HALF+1..UPDATES`` must have the reference's per-update loss and gradient norm within 1e-5 relative:
the weights, the momentum, NAG's ``lr_old``, the schedule and the data position all crossed the layouts.
The resume falls inside the warmup, so the first resumed step scales the momentum by ``lr / lr_old`` != 1:
a lost ``lr_old`` (defaulting to the lr it steps with) shows in the loss.
Runs of one world size share a launch (one start-up; each run builds its own process groups and engine).
"""

import json
import shutil

import pytest
import torch

from adaptive_lm_ds import logs
from adaptive_lm_ds.checkpoint import CheckpointError, integrity, load_file
from adaptive_lm_ds.formats import state_reader
from adaptive_lm_ds.formats.state_adapter import read_training_state
from adaptive_lm_ds.testing import run_on_ranks, run_script
from adaptive_lm_ds.training import resume
from tests.oracle import REPO

from .training_runs import grad_norms, per_token_losses, train_on_rank, train_runs_on_rank

LAUNCHER = REPO / "launchers" / "train_wiki103.py"
UPDATES, HALF = 6, 3
RTOL = 1e-5

# name: (world size, tp, pp, DeepSpeed JSON or None for the plain fp32 engine)
LAYOUTS = {
    "tp1": (1, 1, 1, None),
    "tp2-pp2": (4, 2, 2, "pipeline_zero1"),
    "tp2-pp2-plain": (4, 2, 2, None),  # no --deepspeed_config: ZeRO-0, each stage's torch optimizer state
    "dp2-zero1": (2, 1, 1, "zero1"),
    "dp2-zero2": (2, 1, 1, "zero2"),
    "tp2-zero3": (2, 2, 1, "zero3"),
    "pp2": (2, 1, 2, "pipeline_zero1"),
    "tp2-bf16": (2, 2, 1, "zero1_bf16"),
}


def _argv(data, init, name: str, *extra: str, optimizer: str = "nag") -> list[str]:
    world, tp, pp, ds = LAYOUTS[name]
    dp = world // (tp * pp)
    optim = ["--optimizer", "nag", "--lr", "1.0", "--momentum", "0.99"]
    if optimizer == "adam":
        optim = ["--optimizer", "adam", "--lr", "0.01"]
    argv = [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "2",
        "--update-freq", str(2 // dp), "--max-update", str(UPDATES), *optim, "--lr-scheduler", "cosine",
        "--warmup-updates", "4", "--warmup-init-lr", "1e-7", "--lr-period-updates", "-1", "--clip-norm", "0.1",
        "--dropout", "0", "--validate-interval-updates", "0", "--max-valid-steps", "1", "--log-interval", "100",
        "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp), *extra,
    ]  # fmt: skip
    return argv + (["--deepspeed_config", f"ds_configs/{ds}.json"] if ds else [])


def _save_at_half(save) -> list[str]:
    return ["--save-dir", str(save), "--save-interval-updates", str(HALF), "--keep-last-n", "-1"]


def _train(world: int, argvs: list[list[str]]) -> list[dict]:
    """Each of ``argvs`` in turn in one launch of ``world`` ranks (one start-up for them all): rank 0's runs."""
    return run_on_ranks(train_runs_on_rank, nprocs=world, timeout=900, argvs=argvs)[0]


def _made(runs: list[dict], names) -> list[dict]:
    for name, run in zip(names, runs, strict=True):
        assert run["error"] is None, (name, run["error"])
    return runs


@pytest.fixture(scope="module")
def one_process(tiny_run_setup, tmp_path_factory):
    """The uninterrupted one-process runs, in one launch: {"nag": run, "adam": run, "tp1 checkpoint": the NAG
    run's tag folder at update HALF (saving takes nothing from the run: it is also tp1's phase A)}."""
    data, init = tiny_run_setup
    save = tmp_path_factory.mktemp("one-process") / "save"
    argvs = [_argv(data, init, "tp1", *_save_at_half(save)), _argv(data, init, "tp1", "--no-save", optimizer="adam")]
    nag, adam = _made(_train(1, argvs), ("nag", "adam"))
    return {"nag": nag, "adam": adam, "tp1 checkpoint": save / f"checkpoint_{HALF}"}


@pytest.fixture(scope="module")
def reference(one_process):
    """{optimizer: the uninterrupted one-process run}."""
    return {optimizer: one_process[optimizer] for optimizer in ("nag", "adam")}


# phase A runs made together, one launch per world size (tp1's is the one-process NAG run's own save)
PHASE_A_LAUNCHES = (
    (("tp2-pp2", "nag"), ("tp2-pp2-plain", "nag")),
    (("dp2-zero2", "nag"), ("dp2-zero1", "adam"), ("tp2-bf16", "nag")),
)


@pytest.fixture(scope="module")
def phase_a(tiny_run_setup, tmp_path_factory, one_process):
    """{(layout, optimizer): the tag folder its run saved at update HALF}, each launch made on first use."""
    data, init = tiny_run_setup
    made = {("tp1", "nag"): one_process["tp1 checkpoint"]}

    def get(name: str, optimizer: str = "nag"):
        if (name, optimizer) not in made:
            (launch,) = [runs for runs in PHASE_A_LAUNCHES if (name, optimizer) in runs]
            root = tmp_path_factory.mktemp("phase-a")
            argvs = [_argv(data, init, n, *_save_at_half(root / f"{n}-{o}"), optimizer=o) for n, o in launch]
            _made(_train(LAYOUTS[launch[0][0]][0], argvs), launch)
            made.update({(n, o): root / f"{n}-{o}" / f"checkpoint_{HALF}" for n, o in launch})
        return made[name, optimizer]

    return get


PAIRS = [
    ("tp2-pp2", "dp2-zero1"),
    ("tp2-pp2", "tp2-zero3"),
    ("tp1", "tp2-pp2"),
    ("dp2-zero2", "pp2"),
    ("tp2-pp2", "tp1"),  # into the plain fp32 engine: the module and optimizer.state directly
    ("tp2-pp2-plain", "dp2-zero1"),  # out of a ZeRO-0 pipeline: its stages' momentum in their parameter order
]
# (saved layout, resumed layout, optimizer): every phase B run the tests read
RESUMES = [(a, b, "nag") for a, b in PAIRS] + [("dp2-zero1", "tp2-zero3", "adam"), ("tp2-bf16", "tp1", "nag")]


@pytest.fixture(scope="module")
def resumed(tiny_run_setup, tmp_path_factory, phase_a):
    """{(saved, resumed, optimizer): phase B's run, resumed from its own copy of phase A's tag folder}; the
    RESUMES into one world size are made in one launch, on first use of one of them."""
    data, init = tiny_run_setup
    made = {}

    def get(saved: str, into: str, optimizer: str = "nag") -> dict:
        if (saved, into, optimizer) not in made:
            world = LAYOUTS[into][0]
            launch = [run for run in RESUMES if LAYOUTS[run[1]][0] == world]
            root = tmp_path_factory.mktemp(f"resumed-on-{world}-ranks")
            argvs = []
            for i, (a, b, o) in enumerate(launch):
                source = root / str(i) / "source" / f"checkpoint_{HALF}"
                shutil.copytree(phase_a(a, o), source)  # the resumed run never touches phase A's
                flags = ["--restore-file", str(source), "--save-dir", str(root / str(i) / "resumed"), "--no-save"]
                argvs.append(_argv(data, init, b, *flags, optimizer=o))
            made.update(zip(launch, _train(world, argvs)))
        return made[saved, into, optimizer]

    return get


def assert_continues_reference(resumed: dict, reference: dict, rtol: float = RTOL) -> None:
    assert resumed["error"] is None, resumed["error"]
    assert [h["update"] for h in resumed["history"]] == list(range(HALF + 1, UPDATES + 1))
    want = {"loss": per_token_losses(reference)[HALF:], "gnorm": grad_norms(reference)[HALF:]}
    got = {"loss": per_token_losses(resumed), "gnorm": grad_norms(resumed)}
    for what in want:
        torch.testing.assert_close(got[what], want[what], rtol=rtol, atol=0, msg=what)
    lrs = [h["lr"] for h in resumed["history"]]
    assert lrs == pytest.approx([h["lr"] for h in reference["history"]][HALF:], rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(("saved", "into"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_resume_in_another_layout_matches_one_process(reference, resumed, saved, into):
    assert_continues_reference(resumed(saved, into), reference["nag"])


@pytest.mark.slow
def test_adam_moments_and_step_cross_layouts(reference, resumed):
    assert_continues_reference(resumed("dp2-zero1", "tp2-zero3", "adam"), reference["adam"])


@pytest.mark.slow
def test_bf16_checkpoint_resumes_in_fp32_close_and_finite(reference, resumed):
    """bf16 ZeRO-1 TP2 -> fp32 TP1: the fp32 masters cross; phase A's bf16 forward differs from fp32 by
    bf16 rounding (~1e-3 relative here), so the continuation is close, not equal."""
    result = resumed("tp2-bf16", "tp1")
    assert all(torch.isfinite(per_token_losses(result))) and all(torch.isfinite(grad_norms(result)))
    assert_continues_reference(result, reference["nag"], rtol=2e-2)


@pytest.mark.slow
def test_layout_change_and_a_changed_update_size_are_each_said_in_one_line(tiny_run_setup, tmp_path, phase_a):
    """TP1 (4 sequences per update) resumed at DP2 ZeRO-1 with --update-freq 2 (8 per update): one start-up line
    names both layouts, one warning says the batch changed, and the run continues from update HALF + 1."""
    data, init = tiny_run_setup
    source = tmp_path / "source" / f"checkpoint_{HALF}"
    shutil.copytree(phase_a("tp1"), source)
    flags = ["--restore-file", str(source), "--save-dir", str(tmp_path / "resumed"), "--no-save"]
    argv = _argv(data, init, "dp2-zero1", *flags, "--update-freq", "2", "--log-format", "json", "--log-interval", "1")
    output = run_script(LAUNCHER, argv, nprocs=2, timeout=600).output
    messages = [logs.message(line) for line in output.splitlines()]
    said = [m for m in messages if m.startswith(f"resuming checkpoint_{HALF} saved at")]
    assert said == [
        f"resuming checkpoint_{HALF} saved at TP1 x PP1 x DP1 ZeRO-0 fp32 in TP1 x PP1 x DP2 ZeRO-1 fp32: weights, "
        "NAG momentum, schedule and data position carried over; RNG not (layout changed)"
    ]
    warned = [m for m in messages if "sequences per update" in m]
    assert len(warned) == 1 and "took 4 sequences per update, this run takes 8" in warned[0]
    updates = [json.loads(m)["update"] for m in messages if m.startswith("{") and '"wps"' in m]
    assert updates == list(range(HALF + 1, UPDATES + 1))


@pytest.mark.slow
def test_a_tp_ranks_rows_are_read_from_the_saved_rank_holding_them(phase_a, monkeypatch):
    """TP2 saved 20 of band 0's 40 rows per rank: rows 25-34 load saved rank 1's weight files alone (no saved
    rank's weights are loaded, nor a table made whole, for rows it did not hold), and equal those rows of the
    whole one-piece table."""
    state = read_training_state(phase_a("tp2-pp2"))
    name = "embed.tokens.bands.0.table.weight"
    loaded = []
    store = state_reader._SavedRanks._store
    monkeypatch.setattr(
        state_reader._SavedRanks, "_store", lambda self, kind, r: loaded.append(r) or store(self, kind, r)
    )
    rows = state.weights.narrow(name, 0, 25, 10)
    assert set(loaded) == {1}
    assert torch.equal(rows, state.weights[name][25:35])


@pytest.mark.slow
def test_optimizer_files_of_a_format_this_version_cannot_read_are_refused_in_one_line(phase_a, tmp_path):
    """An older DeepSpeed's ZeRO partitions without ``param_slice_mappings`` (re-hashed, so intact on disk)."""
    tag = tmp_path / f"checkpoint_{HALF}"
    shutil.copytree(phase_a("tp2-pp2"), tag)
    optim = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    saved = load_file(optim)
    del saved["optimizer_state_dict"]["param_slice_mappings"]
    torch.save(saved, optim)
    integrity.write_manifest(tag)
    with pytest.raises(CheckpointError) as error:
        resume.read_state(tag, "TP2 x PP2 x DP1 ZeRO-1 fp32")
    message = str(error.value)
    assert "\n" not in message and "format this version cannot read" in message
    assert "resume it at TP2 x PP2 x DP1 ZeRO-1 fp32" in message


@pytest.mark.slow
def test_a_plain_pipeline_optimizer_state_out_of_its_parameter_order_is_refused_in_one_line(phase_a, tmp_path):
    """The last stage's momentum buffers of its last two parameters of different shapes swapped (re-hashed, so intact on
    disk): the state no longer lines up with the stage's parameters, and reading it says so."""
    tag = tmp_path / f"checkpoint_{HALF}"
    shutil.copytree(phase_a("tp2-pp2-plain"), tag)
    last_stage = tag / "mp_rank_02_model_states.pt"  # pp rank 1 x TP 2 + tp rank 0
    saved = load_file(last_stage)
    state = saved["optimizer"]["state"]
    last = max(state)  # the last block's last parameter (the tied copies come first)
    shape = state[last]["momentum_buffer"].shape
    other = next(i for i in sorted(state, reverse=True) if state[i]["momentum_buffer"].shape != shape)
    state[last], state[other] = state[other], state[last]
    torch.save(saved, last_stage)
    integrity.write_manifest(tag)
    with pytest.raises(CheckpointError) as error:
        read_training_state(tag)
    message = str(error.value)
    assert "\n" not in message and "the optimizer state does not match the model" in message


@pytest.fixture(scope="module")
def gbw_huge_tables(tmp_path_factory):
    """(data-bin with a 793,475-word dictionary, consolidated initial weights): gbw_huge's vocabulary tables at
    their real shape (d 1536, bands 60K / 100K / 633K words: 191M parameters) under 2 small blocks."""
    from adaptive_lm_ds.data.preprocess import binarize_file, build_dictionary
    from adaptive_lm_ds.synthetic_corpus import CorpusSpec, generate_corpus

    from .training_runs import save_initial_weights

    root = tmp_path_factory.mktemp("gbw-huge-tables")
    spec = CorpusSpec(vocab_size=400, num_classes=8, favourites_per_class=40, train_tokens=8000,
                      valid_tokens=1000, test_tokens=1000, seed=7)  # fmt: skip
    generate_corpus(root / "text", spec)
    dictionary = build_dictionary([str(root / "text" / "train.txt")])
    for i in range(GBW_VOCAB - len(dictionary)):  # the corpus's words, then unseen ones up to gbw's size
        dictionary.add_symbol(f"unseen{i}")
    (root / "data").mkdir()
    dictionary.save(root / "data" / "dict.txt")
    for split in ("train", "valid", "test"):
        binarize_file(str(root / "text" / f"{split}.txt"), dictionary, str(root / "data" / split), progress=False)
    init = root / "init"
    run_on_ranks(save_initial_weights, nprocs=1, timeout=900, data_bin=str(root / "data"), out_dir=str(init),
                 preset="gbw_huge", num_layers=2, ffn_dim=256)  # fmt: skip
    return root / "data", init


GBW_VOCAB = 793_475
GBW_UPDATES, GBW_SAVED_AT = 3, 1  # two updates after the resume: the second steps with the saved momentum


def _gbw_argv(data, init, ds: str, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "2",
        "--max-update", str(GBW_UPDATES), "--optimizer", "nag", "--lr", "1.0", "--momentum", "0.99",
        "--lr-scheduler", "cosine", "--warmup-updates", "1", "--warmup-init-lr", "1e-7", "--lr-period-updates", "-1",
        "--clip-norm", "0.1", "--dropout", "0", "--attention-dropout", "0", "--adaptive-softmax-dropout", "0",
        "--validate-interval-updates", "0", "--max-valid-steps", "1", "--log-interval", "100",
        "--tensor-model-parallel-size", "2", "--deepspeed_config", f"ds_configs/{ds}.json", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_gbw_huge_tables_resume_in_another_layout_loading_only_their_own_shards(gbw_huge_tables, tmp_path):
    """TP2 ZeRO-1 saves at update 1 of 3; TP2 ZeRO-2 resumes: updates 2-3 equal the uninterrupted TP2 ZeRO-1
    run's (itself equal to one process: test_train_layouts.py), and each resuming rank's peak RSS grows over the
    uninterrupted run's by at most its own saved shard's files plus one one-piece table (band 0), not by the
    other rank's files (1.2 GiB more) or whole tables."""
    data, init = gbw_huge_tables
    save = tmp_path / "save"
    flags = ["--save-dir", str(save), "--save-interval-updates", str(GBW_SAVED_AT)]
    straight = run_on_ranks(train_on_rank, nprocs=2, timeout=900, argv=_gbw_argv(data, init, "zero1", *flags))
    tag = save / f"checkpoint_{GBW_SAVED_AT}"
    resume = ["--restore-file", str(tag), "--no-save", "--save-dir", str(tmp_path / "b")]
    resumed = run_on_ranks(train_on_rank, nprocs=2, timeout=900, argv=_gbw_argv(data, init, "zero2", *resume))
    for result in (*straight, *resumed):
        assert result["error"] is None, result["error"]
    torch.testing.assert_close(
        per_token_losses(resumed[0]), per_token_losses(straight[0])[GBW_SAVED_AT:], rtol=RTOL, atol=0
    )
    torch.testing.assert_close(grad_norms(resumed[0]), grad_norms(straight[0])[GBW_SAVED_AT:], rtol=RTOL, atol=0)
    own_files = (tag / "mp_rank_00_model_states.pt").stat().st_size
    own_files += (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").stat().st_size
    band0_table = 60_000 * 1536 * 4
    for before, after in zip(straight, resumed):
        peak = {name: max(h["extra"]["memory_gb"] for h in r["history"]) * 2**30 for name, r in
                (("straight", before), ("resumed", after))}  # fmt: skip
        assert peak["resumed"] - peak["straight"] < own_files + band0_table, peak
