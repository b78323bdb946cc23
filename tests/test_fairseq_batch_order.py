"""FairseqBatchIterator: fairseq-train's micro batches for the same command line, its state, and its refusals.

The oracle tests give one command line to fairseq-train (tests/oracle_scripts/record_fairseq_batches.py
records the batches of every update, shard by shard) and to our iterator, and compare the token tensors
of every micro batch over two epochs. The others check the iterator's own rules on a stub dataset.
"""

import itertools
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adaptive_lm_ds.data import DataError, FairseqBatchIterator, build_batch_iterator
from adaptive_lm_ds.data.fairseq_order import batch_split_points
from tests.oracle import SCRIPTS
from tests.same_command_line import batch_iterator

PAD = 1


class Blocks:
    """Dataset stub: sample i has ``sizes[i]`` targets, all equal to 10 + i (so rows name their sample)."""

    tokens_per_sample = 8

    def __init__(self, sizes) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": np.full(self.sizes[i], 10 + i), "targets": np.full(self.sizes[i], 10 + i)}


def mixed_blocks(n: int = 101) -> Blocks:
    return Blocks(np.random.RandomState(0).randint(1, 9, size=n))


def sample_ids(batch) -> list[int]:
    return [int(row[0]) - 10 for row in batch["targets"] if row[0] != PAD]


def endless(iterator):
    while True:
        yield from iterator


def take(iterator, n: int) -> list[list[int]]:
    return [sample_ids(b) for b in itertools.islice(endless(iterator), n)]


def iterator(data=None, **kw) -> FairseqBatchIterator:
    args = {"max_tokens": 16, "max_sentences": 4, "required_batch_size_multiple": 1, "seed": 5, **kw}
    return FairseqBatchIterator(data or mixed_blocks(), args.pop("batch_size", 4), **args)


# ------------------------------------------------------------------ batching rule
@pytest.mark.parametrize("max_tokens,max_sentences,multiple", [(16, 0, 1), (16, 4, 1), (24, 0, 4), (0, 3, 2)])
def test_batches_respect_fairseqs_limits_and_cover_every_sample(max_tokens, max_sentences, multiple):
    sizes = sorted(np.random.RandomState(1).randint(1, 9, size=200).tolist())
    points = batch_split_points(sizes, max_tokens, max_sentences, multiple)
    batches = np.split(np.asarray(sizes), points)
    assert sum(map(len, batches)) == len(sizes) and all(len(b) for b in batches)
    for b in batches[:-1]:  # the last batch is the remainder fairseq may drop
        assert max_tokens <= 0 or len(b) * b.max() <= max_tokens
        assert max_sentences <= 0 or len(b) <= max_sentences
        assert len(b) < multiple or len(b) % multiple == 0


def test_one_epoch_over_the_ranks_holds_every_sample_once():
    data = mixed_blocks()
    ranks = [iterator(data, dp_rank=r, dp_size=2) for r in range(2)]
    seen = sorted(i for it in ranks for batch in take(it, len(it)) for i in batch)
    assert seen == list(range(len(data)))


def test_short_shards_and_short_updates_are_filled_with_empty_batches():
    it = iterator(dp_rank=1, dp_size=2, update_freq=3)
    assert it.num_batches % 2 == 1, "the fixture must leave rank 1 a short shard"
    batches = list(it)
    assert len(batches) == len(it) and len(it) % 3 == 0
    fills = batches[it.num_batches // 2 :]
    assert fills and all(b["ntokens"] == 0 and bool((b["targets"] == PAD).all()) for b in fills)


def test_dp_rank_r_of_n_takes_the_single_rank_batches_r_r_plus_n_and_so_on():
    single = take(iterator(), iterator().num_batches)
    for r in range(2):
        rank = take(iterator(dp_rank=r, dp_size=2), len(iterator(dp_size=2)))
        assert rank[: len(single[r::2])] == single[r::2]


def test_later_epochs_reshuffle_the_batches_grouped_in_the_first():
    it = iterator()
    first, second = take(it, it.num_batches), take(it, it.num_batches)
    assert first != second
    assert sorted(map(sorted, first)) == sorted(map(sorted, second))


def test_samples_all_longer_than_the_block_give_no_batches():
    assert len(iterator(Blocks([9, 12]))) == 0


# ------------------------------------------------------------------ state
def test_state_round_trip_continues_with_the_same_batches():
    it = iterator(update_freq=2)
    take(it, 10)
    resumed = iterator(update_freq=2)
    resumed.load_state_dict(it.state_dict())
    assert take(resumed, 40) == take(it, 40)


def test_state_moves_to_another_dp_size_with_the_same_global_batches():
    one = iterator(update_freq=2)
    take(one, 8)
    ranks = [iterator(dp_rank=r, dp_size=2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(one.state_dict())
    per_update = [a + b for a, b in zip(take(ranks[0], 4), take(ranks[1], 4))]
    after = take(one, 8)
    assert per_update == [a + b for a, b in zip(after[0::2], after[1::2])]


def test_fairseq_state_round_trip_in_the_first_epoch():
    it = iterator()
    take(it, 7)
    assert it.fairseq_state() == {"version": 2, "epoch": 1, "iterations_in_epoch": 7, "shuffle": True}
    resumed = iterator()
    resumed.load_fairseq_state(it.fairseq_state())
    assert take(resumed, 5) == take(it, 5)


def test_an_exhausted_epoch_is_saved_as_the_next_ones_start():
    it = iterator()
    take(it, it.num_batches)
    assert it.fairseq_state()["epoch"] == 2 and it.fairseq_state()["iterations_in_epoch"] == 0


def test_a_fairseq_state_regroups_the_batches_under_its_epochs_seed_as_fairseq_resumed_does():
    resumed = iterator()
    resumed.load_fairseq_state({"epoch": 2, "iterations_in_epoch": 0})
    fresh = iterator()
    take(fresh, fresh.num_batches)
    assert sorted(map(sorted, take(resumed, resumed.num_batches))) != sorted(
        map(sorted, take(fresh, fresh.num_batches))
    )
    assert resumed.frozen_epoch == 1


def test_a_fairseq_state_past_the_epoch_is_refused():
    it = iterator()
    with pytest.raises(DataError, match="batches into epoch 1"):
        it.load_fairseq_state({"epoch": 1, "iterations_in_epoch": it.num_batches})


def test_a_state_of_our_own_order_is_refused():
    with pytest.raises(DataError, match="--batch-order ours"):
        iterator().load_state_dict({"epoch": 0, "position": 3, "seed": 5})


def test_a_state_from_other_batching_is_refused():
    state = iterator(max_tokens=24).state_dict()
    with pytest.raises(DataError, match="num_batches"):
        iterator().load_state_dict(state)


# ------------------------------------------------------------------ refusals
def test_a_fairseq_batch_larger_than_the_micro_batch_is_refused():
    with pytest.raises(DataError, match="give both programs --batch-size 2"):
        iterator(batch_size=2, max_sentences=0)


def data_config(**kw):
    fields = {"batch_order": "fairseq", "sample_break_mode": "none", "required_batch_size_multiple": None,
              "max_tokens": 16, "batch_size": 0, "update_freq": 1, **kw}  # fmt: skip
    return SimpleNamespace(**fields)


def test_packed_mode_cannot_be_in_fairseqs_order():
    with pytest.raises(DataError, match="packed is this project's own"):
        build_batch_iterator(data_config(sample_break_mode="packed"), mixed_blocks(), 4, 0, 1, 1)


def test_a_batch_size_multiple_without_fairseqs_order_is_refused():
    with pytest.raises(DataError, match="add --batch-order fairseq"):
        build_batch_iterator(
            data_config(batch_order="ours", required_batch_size_multiple=8), mixed_blocks(), 4, 0, 1, 1
        )


# ------------------------------------------------------------------ the oracle
EPOCHS = 2
BLOCK = ["--tokens-per-sample", "64"]
TINY_MODEL = ["--arch", "transformer_lm", "--decoder-layers", "1", "--decoder-embed-dim", "8",
              "--decoder-ffn-embed-dim", "16", "--decoder-attention-heads", "1"]  # fmt: skip
COMMAND_LINES = {  # name: (DP size, fairseq-train data flags, the same for our iterator)
    "none-dp1": (1, ["--sample-break-mode", "none", "--max-tokens", "256", "--seed", "1"]),
    "none-dp2-uf2": (2, ["--sample-break-mode", "none", "--max-tokens", "256", "--seed", "3", "--update-freq", "2"]),
    "eos-dp1": (1, ["--sample-break-mode", "eos", "--max-tokens", "256", "--batch-size", "4", "--seed", "1"]),
    "eos-dp2-uf2": (2, ["--sample-break-mode", "eos", "--max-tokens", "256", "--batch-size", "4", "--seed", "2",
                        "--update-freq", "2", "--required-batch-size-multiple", "2"]),
    "complete-dp1": (1, ["--sample-break-mode", "complete", "--max-tokens", "256", "--batch-size", "4",
                         "--required-batch-size-multiple", "1"]),
}  # fmt: skip


RESUME_FLAGS = ["--sample-break-mode", "none", "--max-tokens", "256", "--seed", "1"]  # saved at epoch 1's end


def fairseq_run(out, data_bin, flags, shard=0, num_shards=1) -> dict:
    """One entry of record_fairseq_batches.py's RUNS.json: fairseq-train on the tiny model with ``flags``."""
    args = [data_bin, "--task", "language_modeling", *TINY_MODEL, *BLOCK, *flags, "--optimizer", "nag", "--lr",
            "0.1", "--cpu", "--disable-validation"]  # fmt: skip
    return {"out": str(out), "shard": shard, "num_shards": num_shards, "args": [str(a) for a in args]}


@pytest.fixture(scope="module")
def fairseq_records(fairseq_oracle, oracle_data_bin, tmp_path_factory):
    """Every fairseq-train run the oracle tests read, recorded in one oracle process (one start-up):
    {command line name: each rank's updates over EPOCHS epochs} and, under "resumed", (epoch 1's updates,
    the updates of the run that resumed from its checkpoint_last.pt to epoch 2)."""
    root = tmp_path_factory.mktemp("batch-order")
    runs = {}
    for name, (dp, flags) in COMMAND_LINES.items():
        for r in range(dp):
            run = [*flags, "--max-epoch", str(EPOCHS), "--no-save"]
            runs[name, r] = fairseq_run(root / f"{name}-rank{r}.pt", oracle_data_bin, run, r, dp)
    save = ["--save-dir", str(root / "save")]
    runs["resumed", 0] = fairseq_run(root / "epoch1.pt", oracle_data_bin, [*RESUME_FLAGS, *save, "--max-epoch", "1"])
    runs["resumed", 1] = fairseq_run(root / "epoch2.pt", oracle_data_bin, [*RESUME_FLAGS, *save, "--max-epoch", "2"])
    (root / "runs.json").write_text(json.dumps(list(runs.values())), encoding="utf-8")
    fairseq_oracle.run("python", SCRIPTS / "record_fairseq_batches.py", root / "runs.json")
    records = {}
    for (name, _rank), run in runs.items():
        records.setdefault(name, []).append(torch.load(run["out"], weights_only=True)["updates"])
    return records


@pytest.fixture(scope="module", params=list(COMMAND_LINES), ids=list(COMMAND_LINES))
def fairseq_shards(request, fairseq_records):
    """(DP size, flags, each rank's recorded updates) of fairseq-train over two epochs."""
    dp, flags = COMMAND_LINES[request.param]
    return dp, flags, fairseq_records[request.param]


def assert_same_batch(ours: dict, theirs: dict, where) -> None:
    """Our fixed-shape batch holds fairseq's [b, t] batch in its corner and padding elsewhere."""
    b, t = theirs["tokens"].shape
    assert ours["ntokens"] == theirs["ntokens"], where
    assert torch.equal(ours["tokens"][:b, :t], theirs["tokens"]), where
    assert torch.equal(ours["targets"][:b, :t], theirs["targets"]), where
    padding = torch.ones_like(ours["targets"], dtype=torch.bool)
    padding[:b, :t] = False
    assert bool((ours["targets"][padding] == PAD).all()), where


@pytest.mark.slow
def test_micro_batches_are_fairseq_trains_for_the_same_command_line(fairseq_shards, oracle_data_bin):
    dp, flags, shards = fairseq_shards
    for rank, updates in enumerate(shards):
        it = batch_iterator([str(oracle_data_bin), *BLOCK, *flags], rank, dp)
        assert {u["epoch"] for u in updates} == set(range(1, EPOCHS + 1))
        assert len(updates) == EPOCHS * len(it) // it.update_freq
        stream = endless(it)
        for k, update in enumerate(updates):
            ours = [next(stream) for _ in range(it.update_freq)]
            empty = {"tokens": torch.zeros(0, 0, dtype=torch.long), "targets": torch.zeros(0, 0, dtype=torch.long),
                     "ntokens": 0}  # fmt: skip
            for m, (o, t) in enumerate(itertools.zip_longest(ours, update["samples"], fillvalue=empty)):
                assert_same_batch(o, t, (rank, k, m))
            assert it.fairseq_state() == update["state"], (rank, k)


@pytest.mark.slow
def test_a_fairseq_iterator_state_continues_on_fairseqs_next_batches(fairseq_shards, oracle_data_bin):
    dp, flags, shards = fairseq_shards
    updates = shards[0]
    first_epoch = [k for k, u in enumerate(updates[:-1]) if u["state"]["epoch"] == 1]
    k = first_epoch[len(first_epoch) // 2]  # mid-epoch: fairseq resumed there regroups under epoch 1, as it began
    it = batch_iterator([str(oracle_data_bin), *BLOCK, *flags], 0, dp)
    it.load_fairseq_state(updates[k]["state"])
    stream = iter(it)
    for m, theirs in enumerate(updates[k + 1]["samples"]):
        assert_same_batch(next(stream), theirs, m)


@pytest.mark.slow
def test_a_fairseq_run_resumed_at_an_epoch_start_regroups_and_so_do_we(fairseq_records, oracle_data_bin):
    """fairseq-train resumed from checkpoint_last.pt (epoch 2, 0 iterations) groups its batches under epoch 2's
    seed, not epoch 1's as the uninterrupted run does; load_fairseq_state continues as the resumed run."""
    first, resumed = fairseq_records["resumed"]
    saved = first[-1]["state"]  # what checkpoint_last.pt holds: epoch 2, 0 iterations
    assert saved["epoch"] == resumed[0]["epoch"] == 2
    ours = batch_iterator([str(oracle_data_bin), *BLOCK, *RESUME_FLAGS])
    ours.load_fairseq_state(saved)
    for k, (o, update) in enumerate(zip(ours, resumed, strict=True)):
        assert_same_batch(o, update["samples"][0], k)
    uninterrupted = batch_iterator([str(oracle_data_bin), *BLOCK, *RESUME_FLAGS])
    uninterrupted.set_epoch(1)  # epoch 2, grouped under epoch 1's seed
    resumed_first = resumed[0]["samples"][0]["tokens"]
    assert not torch.equal(next(iter(uninterrupted))["tokens"][: len(resumed_first)], resumed_first)


# ------------------------------------------------------------------ in the trainer
@pytest.fixture(scope="module")
def odd_epoch_data(tmp_path_factory):
    """A data-bin whose epoch has an odd number of fairseq batches under FILL_FLAGS (checked in the test)."""
    from adaptive_lm_ds.testing import run_on_ranks
    from tests.training_runs import make_data_bin, save_initial_weights

    root = tmp_path_factory.mktemp("odd-epoch")
    data = make_data_bin(root / "data", train_tokens=1_000)
    run_on_ranks(save_initial_weights, nprocs=1, data_bin=str(data), out_dir=str(root / "init"))
    return data, root / "init"


FILL_FLAGS = ["--tokens-per-sample", "32", "--max-tokens", "96", "--required-batch-size-multiple", "1", "--seed", "4"]
SAVED_AT = 4  # an update of the first epoch


def fill_argv(data, init, updates: int, *extra: str) -> list[str]:
    return [str(data), "--init-from", str(init), *FILL_FLAGS, "--batch-order", "fairseq", "--max-update",
            str(updates), "--lr", "0.1", "--warmup-updates", "0", "--lr-period-updates", "-1", "--deepspeed_config",
            "ds_configs/zero1.json", "--validate-interval-updates", "0", "--max-valid-steps", "1", "--log-interval",
            "100", *extra]  # fmt: skip


def epoch_and_three(data) -> int:
    """Updates at --update-freq 2 through the epoch's filled last update, then three of the next epoch."""
    return batch_iterator([str(data), *FILL_FLAGS]).num_batches // 2 + 3


@pytest.fixture(scope="module")
def uninterrupted_dp1(odd_epoch_data, tmp_path_factory):
    """(per-update history, save dir holding checkpoint_SAVED_AT) of DP1 --update-freq 2 over
    epoch_and_three updates: the reference of both trainer tests."""
    from adaptive_lm_ds.testing import run_on_ranks
    from tests.training_runs import train_on_rank

    data, init = odd_epoch_data
    save = tmp_path_factory.mktemp("uninterrupted") / "save"
    flags = ["--update-freq", "2", "--save-dir", str(save), "--save-interval-updates", str(SAVED_AT)]
    (run,) = run_on_ranks(
        train_on_rank, nprocs=1, timeout=600, argv=fill_argv(data, init, epoch_and_three(data), *flags)
    )
    assert run["error"] is None, run["error"]
    return run["history"], save


@pytest.mark.slow
def test_filled_updates_train_alike_at_dp1_update_freq_2_and_dp2(odd_epoch_data, uninterrupted_dp1):
    """Past an epoch whose last update holds one real batch: DP1 fills the update, DP2 rank 1 gets fairseq's
    empty shard batch; both must train exactly as the real batch alone, so their updates agree."""
    from adaptive_lm_ds.testing import run_on_ranks
    from tests.training_runs import train_on_rank

    data, init = odd_epoch_data
    epoch = batch_iterator([str(data), *FILL_FLAGS])
    assert epoch.num_batches % 2 == 1, "the data must end its epoch with a half-filled update"
    updates = epoch_and_three(data)
    dp1 = uninterrupted_dp1[0]
    argv = fill_argv(data, init, updates, "--update-freq", "1", "--no-save")
    dp2 = run_on_ranks(train_on_rank, nprocs=2, timeout=600, argv=argv)[0]["history"]
    dp1_batches = endless(batch_iterator([str(data), *FILL_FLAGS, "--update-freq", "2"]))
    sizes = [b["ntokens"] for b in itertools.islice(dp1_batches, 2 * updates)]
    filled = epoch.num_batches // 2  # 0-based index of the epoch's last update
    assert sizes[2 * filled + 1] == 0
    assert [r["ntokens"] for r in dp1] == [a + b for a, b in zip(sizes[0::2], sizes[1::2])]
    assert [r["ntokens"] for r in dp2] == [r["ntokens"] for r in dp1]
    for k, (one, two) in enumerate(zip(dp1, dp2)):
        assert two["loss_sum"] == pytest.approx(one["loss_sum"], rel=1e-5), k
        assert two["gnorm"] == pytest.approx(one["gnorm"], rel=1e-5), k


@pytest.mark.slow
def test_a_resumed_run_continues_on_the_uninterrupted_runs_batches_across_an_epoch(
    odd_epoch_data, uninterrupted_dp1, tmp_path
):
    from adaptive_lm_ds.testing import run_on_ranks
    from tests.training_runs import train_on_rank

    data, init = odd_epoch_data
    straight, save = uninterrupted_dp1
    updates = epoch_and_three(data)  # into epoch 2
    source = tmp_path / f"checkpoint_{SAVED_AT}"
    shutil.copytree(save / f"checkpoint_{SAVED_AT}", source)  # the resumed run never touches the reference's
    flags = ["--update-freq", "2", "--save-dir", str(tmp_path / "resumed"), "--no-save", "--restore-file", str(source)]
    resumed = run_on_ranks(train_on_rank, nprocs=1, timeout=600, argv=fill_argv(data, init, updates, *flags))
    after = resumed[0]["history"]
    assert [r["update"] for r in after] == list(range(SAVED_AT + 1, updates + 1))
    assert {r["epoch"] for r in after} == {1, 2}
    uninterrupted = [(r["ntokens"], r["loss_sum"]) for r in straight[SAVED_AT:]]
    assert [(r["ntokens"], r["loss_sum"]) for r in after] == uninterrupted
