"""A log interval reads (almost) nothing back from the device: host syncs counted during real updates.

On a GPU every ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``, ``nonzero``
or boolean-mask index stalls the host until the device catches up. Here, on the CPU, the Python-level
calls of those are counted (the tensor methods and ``torch.nonzero`` are wrapped) while the trainer runs
the updates of one log interval (``Trainer.train_update``, ``--log-interval 3``) on the plain fp32 engine
the fairseq command line uses (no ZeRO), with ``--clip-norm 0.1`` and ``--update-freq 2``. The bound per
update, by where the read comes from:

* loss, token count, gradient norm, clipping: none per update; the trainer reads the interval's
  updates in one ``read_step_results`` at its last update (one read per log interval);
* whether the step may be applied: one ``bool`` of the gradient norm's finiteness per update, on the
  plain fp32 engine only (``deepspeed_compat.keep_fp32_grad_norm``). A non-finite update must not reach
  the weights, and the client optimizer's step (NAG's momentum, AdamW's moments) and the host's update
  count cannot be held back by a device flag; DeepSpeed's ZeRO / bf16 / fp16 wrappers make the same one
  read themselves (``is_invalid_grad_norm``, the fp16 overflow flag);
* the adaptive softmax's routing of targets to tail bands: one ``bincount(...).tolist()`` per micro
  batch (the tails' row counts size their matrices; fairseq's routing needs one ``nonzero`` per band).

Reads inside C++ kernels are not seen (none of the ops used sizes its output from data on the host).
"""

from __future__ import annotations

import collections
import contextlib
import traceback

import pytest
import torch

from adaptive_lm_ds.testing import run_on_ranks

UPDATE_FREQ = 2
LOG_INTERVAL = 3
ROUTING_READS_PER_MICRO_BATCH = 1
SKIP_DECISIONS_PER_UPDATE = 1  # the plain fp32 engine's finiteness check (see the module docstring)
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


def _where(key: tuple[str, str]) -> str:
    """The read's kind: 'routing', 'skip decision', 'interval read' or the calling line for anything else."""
    line = key[1]
    if line.startswith("layers/adaptive_softmax.py"):
        return "routing"
    if line.startswith("deepspeed_compat.py"):
        return "skip decision"
    if line.startswith("training/engine.py") and key[0] == "tolist":
        return "interval read"
    return line


def count_syncs_of_one_log_interval(argv: list[str]) -> dict:
    """Rank-side: build the trainer, run one log interval as warm-up, then count the reads of each update
    of the next interval (its last update includes reading the interval back)."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.metrics_log import TrainLogger
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.trainer import Trainer, _endless

    trainer = Trainer(config_from_args(build_parser("test").parse_args(argv)))
    trainer.logger = TrainLogger(log_interval=LOG_INTERVAL, rank=1)  # rank 1: counts, prints nothing
    delivered: list[int] = []
    trainer.on_update.append(lambda record: delivered.append(record.update))
    stream = _endless(trainer.batches)
    for _ in range(LOG_INTERVAL):
        trainer.train_update(stream)
    per_update = []
    for _ in range(LOG_INTERVAL):
        with counted_host_syncs() as counts:
            trainer.train_update(stream)
        by_kind: collections.Counter = collections.Counter()
        for key, n in counts.items():
            by_kind[_where(key)] += n
        per_update.append({"reads": dict(by_kind), "delivered": list(delivered)})
    parallel.destroy_parallel()
    return {"per_update": per_update}


def _argv(data, init) -> list[str]:
    return [
        "--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "4",
        "--update-freq", str(UPDATE_FREQ), "--clip-norm", "0.1", "--optimizer", "nag", "--lr", "0.1",
        "--max-update", "8", "--log-interval", str(LOG_INTERVAL), "--no-save",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def interval(tiny_run_setup) -> list[dict]:
    (result,) = run_on_ranks(count_syncs_of_one_log_interval, nprocs=1, argv=_argv(*tiny_run_setup))
    return result["per_update"]


def test_updates_inside_a_log_interval_read_no_metric(interval):
    for update in interval[:-1]:  # updates 4 and 5: nothing delivered, nothing read but routing and the skip
        reads = dict(update["reads"])
        assert reads.pop("routing", 0) <= ROUTING_READS_PER_MICRO_BATCH * UPDATE_FREQ, update
        assert reads == {"skip decision": SKIP_DECISIONS_PER_UPDATE}, f"host syncs outside routing/skip: {reads}"
        assert update["delivered"] == [1, 2, 3]


def test_the_log_interval_is_read_back_in_one_transfer(interval):
    last = dict(interval[-1]["reads"])
    assert last.pop("routing", 0) <= ROUTING_READS_PER_MICRO_BATCH * UPDATE_FREQ, last
    assert last == {"skip decision": SKIP_DECISIONS_PER_UPDATE, "interval read": 1}, last
    assert interval[-1]["delivered"] == [1, 2, 3, 4, 5, 6]  # the interval's records, in order
