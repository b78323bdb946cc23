"""Every layout sends, in one real update, no more than the analytic minimum of its communication.

One real update per layout (the trainer's engine and step, the tiny model, ``--update-freq 2``), every
``torch.distributed`` call recorded (``comm_ledger``) beside ``comm_model``'s minimum for that rank,
counted from the model config, the layout, the DeepSpeed plan and the update's own targets per band.
Only the documented scalars (token counts, norms, flags, the pipeline's loss) are left out.
"""

import dataclasses

import pytest

from adaptive_lm_ds.comm_model import WIRE_FACTOR, CommSetting, Term, update_terms, update_wire_bytes, wire_bytes
from adaptive_lm_ds.testing import run_on_ranks

from .test_train_layouts import LAYOUTS as TRAIN_LAYOUTS

SEQ, MICRO, GAS = 32, 2, 2
SCALAR_CALLS = 40  # tolerance: scalar collectives per update (DeepSpeed's ZeRO-1 makes 18: overflow and norm checks)

# name: (world size, tp, pp, DeepSpeed JSON or None for the plain fp32 engine), as the layout tests run them
LAYOUTS = {name: TRAIN_LAYOUTS[name] for name in ("dp2-zero1", "dp2-zero2", "dp2-zero3", "tp2", "pp2", "tp2-pp2",
                                                  "tp2-dp2")}  # fmt: skip


def ledger_on_rank(argvs: list[list[str]]) -> list[dict]:
    """Rank-side: for each launcher ``argv``, build the trainer, run one update (one-off set-up transfers),
    then record the next update's transfers, with what the analytic model needs to count the minimum."""
    import torch

    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.comm_ledger import CommLedger, layout_axes
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.trainer import Trainer

    out = []
    for argv in argvs:
        trainer = Trainer(config_from_args(build_parser("test").parse_args(argv)))
        stream, gas = iter(trainer.batches), trainer.cfg.data.update_freq
        trainer.stepper.train_step([next(stream) for _ in range(gas)])
        batches = [next(stream) for _ in range(gas)]
        with CommLedger(layout_axes()) as ledger:
            trainer.stepper.train_step(batches)
        starts = torch.tensor([b.start for b in trainer.model_cfg.output_bands()[1:]])
        band_tokens = [torch.bincount(torch.bucketize(b["targets"].reshape(-1), starts, right=True),
                                      minlength=len(starts) + 1).tolist() for b in batches]  # fmt: skip
        dims, plan = trainer.dims, trainer.plan
        setting = CommSetting(
            tp=dims.tp, pp=dims.pp, dp=dims.dp, zero_stage=plan.zero_stage, precision=plan.precision,
            micro_batch=plan.micro_batch, seq_len=trainer.cfg.data.tokens_per_sample, gradient_accumulation=gas,
            packed=trainer.cfg.data.sample_break_mode == "packed",
            zero3_max_live_parameters=plan.zero3_max_live_parameters, pipe_partitioned=plan.pipe_partitioned,
        )  # fmt: skip
        out.append({"bulk": ledger.totals(), "scalars": ledger.totals(scalars=True), "setting": setting,
                    "model": trainer.model_cfg, "stage": dims.pp_rank, "band_tokens": band_tokens})  # fmt: skip
        parallel.destroy_parallel()
    return out


def _argv(data, tp: int, pp: int, ds: str | None) -> list[str]:
    argv = [
        "--data", str(data), "--preset", "tiny", "--tokens-per-sample", str(SEQ), "--batch-size", str(MICRO),
        "--update-freq", str(GAS), "--max-update", "10", "--optimizer", "nag", "--lr", "0.1", "--clip-norm", "0.1",
        "--dropout", "0", "--no-save",
        "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
    ]  # fmt: skip
    return argv + (["--deepspeed_config", f"ds_configs/{ds}.json"] if ds else [])


@pytest.fixture(scope="module")
def ledgers(tiny_run_setup) -> dict[str, list[dict]]:
    """{layout: [rank 0's record, rank 1's, ...]}: one launch per world size, every layout of that size in it."""
    data, _ = tiny_run_setup
    out = {}
    for world in sorted({spec[0] for spec in LAYOUTS.values()}):
        names = [name for name, spec in LAYOUTS.items() if spec[0] == world]
        argvs = [_argv(data, *LAYOUTS[name][1:]) for name in names]
        ranks = run_on_ranks(ledger_on_rank, nprocs=world, timeout=900, argvs=argvs)
        for i, name in enumerate(names):
            out[name] = [rank_runs[i] for rank_runs in ranks]
    return out


def measured_wire_bytes(record: dict) -> dict[str, float]:
    setting = record["setting"]
    terms = [Term(axis, op, "measured", v["calls"], v["bytes"]) for (axis, op), v in record["bulk"].items()]
    unknown = [(t.axis, t.op) for t in terms if t.axis not in ("tp", "pp", "dp") or t.op not in WIRE_FACTOR]
    assert not unknown, f"transfers on groups or ops the model does not know: {unknown}"
    return update_wire_bytes(terms, setting)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_layout_sends_no_more_than_its_minimum(ledgers, name):
    for record in ledgers[name]:
        setting = record["setting"]
        minimum = update_wire_bytes(update_terms(record["model"], setting, record["stage"], record["band_tokens"]),
                                    setting)  # fmt: skip
        measured = measured_wire_bytes(record)
        for axis, sent in measured.items():
            assert sent <= minimum.get(axis, 0.0) * (1 + 1e-9), (name, axis, sent, minimum, record["bulk"])
        assert set(minimum) <= set(measured) | {a for a, v in minimum.items() if v == 0}, (name, minimum, measured)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp2", "pp2", "tp2-pp2"])
def test_tensor_and_pipeline_transfers_are_exactly_the_model(ledgers, name):
    """TP and PP payloads are deterministic: the ledger must equal the model, op by op (not only stay below)."""
    for record in ledgers[name]:
        want: dict[tuple[str, str], float] = {}
        for t in update_terms(record["model"], record["setting"], record["stage"], record["band_tokens"]):
            if t.axis in ("tp", "pp"):
                want[(t.axis, t.op)] = want.get((t.axis, t.op), 0) + t.bytes
        got = {k: v["bytes"] for k, v in record["bulk"].items() if k[0] in ("tp", "pp")}
        assert got == want, (name, record["stage"])


def test_wire_bytes_of_a_ring_all_reduce_are_twice_a_reduce_scatter():
    setting = CommSetting(dp=4)
    all_reduce = wire_bytes(Term("dp", "all_reduce", "g", 1, 1000), setting)
    assert all_reduce == 2 * wire_bytes(Term("dp", "reduce_scatter", "g", 1, 1000), setting) == 1500


def _scalar_records(ledgers) -> list[tuple[str, dict]]:
    return [(name, r) for name, records in ledgers.items() for r in records]


@pytest.mark.slow
def test_only_a_few_scalars_travel_beside_the_model(ledgers):
    """The tolerance: scalar collectives only, a bounded number per update (token count, norm, flags, loss)."""
    for name, record in _scalar_records(ledgers):
        calls = sum(v["calls"] for v in record["scalars"].values())
        assert calls <= SCALAR_CALLS, (name, record["scalars"])


def test_ledger_counts_a_known_transfer(monkeypatch):
    """Reference: one all-reduce of a [3, 4] fp32 tensor and one of a scalar, on a world of one."""
    import torch

    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.comm_ledger import CommLedger

    with parallel.single_process():
        import torch.distributed as dist

        with CommLedger({"world": (0,)}) as ledger:
            dist.all_reduce(torch.ones(3, 4))
            dist.all_reduce(torch.ones(1))
    got = [dataclasses.astuple(t) for t in ledger.transfers]
    assert got == [("all_reduce", "self", 48, 12, True), ("all_reduce", "self", 4, 1, True)]
