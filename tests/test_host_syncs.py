"""The update reads (almost) nothing back from the device: host syncs counted during a real train_step.

On a GPU every ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``, ``nonzero``
or boolean-mask index stalls the host until the device catches up. Here, on the CPU, the Python-level
calls of those are counted (the tensor methods and ``torch.nonzero`` are wrapped) while
``Stepper.train_step`` runs one update of the plain fp32 engine the fairseq command line uses (no ZeRO),
with ``--clip-norm 0.1`` and ``--update-freq 2``. The bound per update, by where the read comes from:

* loss, token count, gradient norm, clipping: none (device scalars; the trainer reads the three in
  one ``StepResult.read`` per update, counted separately below);
* the adaptive softmax's routing of targets to tail bands: one ``bincount(...).tolist()`` per micro
  batch (the tails' row counts size their matrices; fairseq's routing needs one ``nonzero`` per band).

Reads inside C++ kernels are not seen (none of the ops used sizes its output from data on the host).
"""

from __future__ import annotations

import collections
import contextlib
import traceback

import torch

from adaptive_lm_ds.testing import run_on_ranks

UPDATE_FREQ = 2
ROUTING_READS_PER_MICRO_BATCH = 1
SYNC_METHODS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "cpu", "nonzero")


@contextlib.contextmanager
def counted_host_syncs():
    """Count (by the product's calling line) the tensor reads that would stall a GPU; yields the Counter."""
    counts: collections.Counter = collections.Counter()

    def caller() -> str:
        frames = [f for f in traceback.extract_stack()[:-2] if "adaptive_lm_ds" in f.filename]
        return f"{frames[-1].filename.split('adaptive_lm_ds/')[-1]}:{frames[-1].lineno}" if frames else "elsewhere"

    def counting(name, original):
        def wrapped(*args, **kwargs):
            counts[(name, caller())] += 1
            return original(*args, **kwargs)

        return wrapped

    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}
    getitem, nonzero = torch.Tensor.__getitem__, torch.nonzero

    def masked_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(torch.is_tensor(i) and i.dtype == torch.bool for i in parts):
            counts[("boolean index", caller())] += 1
        return getitem(self, index)

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counting(name, original))
        torch.Tensor.__getitem__ = masked_getitem
        torch.nonzero = counting("torch.nonzero", nonzero)
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.Tensor.__getitem__ = getitem
        torch.nonzero = nonzero


def count_syncs_of_one_update(argv: list[str]) -> dict:
    """Rank-side: build the trainer, run one warm-up update, count the reads of the next update and of
    the trainer's read of its result."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.trainer import Trainer, _endless

    trainer = Trainer(config_from_args(build_parser("test").parse_args(argv)))
    stream = _endless(trainer.batches)
    trainer.stepper.train_step([next(stream) for _ in range(UPDATE_FREQ)]).read()
    batches = [next(stream) for _ in range(UPDATE_FREQ)]
    with counted_host_syncs() as in_step:
        result = trainer.stepper.train_step(batches)
    with counted_host_syncs() as in_read:
        loss_sum, ntokens, gnorm = result.read()
    parallel.destroy_parallel()
    return {"step": dict(in_step), "read": dict(in_read), "ntokens": ntokens, "gnorm": gnorm, "loss": loss_sum}


def _argv(data, init) -> list[str]:
    return [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "4",
        "--update-freq", str(UPDATE_FREQ), "--clip-norm", "0.1", "--optimizer", "nag", "--lr", "0.1",
        "--max-update", "4", "--no-save",
    ]  # fmt: skip


def test_one_update_reads_only_the_tail_routing_back_from_the_device(tiny_run_setup):
    (result,) = run_on_ranks(count_syncs_of_one_update, nprocs=1, argv=_argv(*tiny_run_setup))
    assert result["ntokens"] == 4 * 32 * UPDATE_FREQ and result["gnorm"] > 0  # a real update ran
    routing = {k: n for k, n in result["step"].items() if k[1].startswith("layers/adaptive_softmax.py")}
    others = {k: n for k, n in result["step"].items() if k not in routing}
    assert others == {}, f"host syncs in the step outside the tail routing: {others}"
    assert sum(routing.values()) <= ROUTING_READS_PER_MICRO_BATCH * UPDATE_FREQ, routing


def test_the_trainer_reads_an_update_back_in_one_transfer(tiny_run_setup):
    (result,) = run_on_ranks(count_syncs_of_one_update, nprocs=1, argv=_argv(*tiny_run_setup))
    assert sum(result["read"].values()) == 1, result["read"]
