"""Run with the fairseq oracle's python: fairseq-train's own loop, recording the micro batches of every update.

    python record_fairseq_batches.py RUNS.json

RUNS.json: a list of ``{"out": OUT.pt, "shard": SHARD, "num_shards": NUM_SHARDS, "args": [fairseq-train-args]}``,
run in turn in this one interpreter (fairseq-train's ``cli_main`` once per entry: one start-up for them all; a
later entry may restore what an earlier one saved).

fairseq-train runs in one process, but its training iterator is the one rank SHARD of NUM_SHARDS data-parallel
ranks would get (``Trainer.get_train_iterator`` passes ``num_shards``/``shard_id`` to the task; here those two
arguments are replaced, nothing else). ``Trainer.train_step`` records the update's micro batches (an empty
shard filler as a [0, 0] batch) and the ``train_iterator`` state a checkpoint after that update would hold,
then returns without training (fairseq's loop treats it as a skipped step): the data path is fairseq's own,
epoch transitions included. Give ``--max-epoch`` to bound a run.

Each OUT.pt: ``{"updates": [{"epoch", "samples": [{"tokens", "targets", "ntokens"}], "state"}, ...]}``, loadable
with ``torch.load(weights_only=True)``.
"""

import json
import sys

import torch
from fairseq import trainer as fairseq_trainer
from fairseq.data import iterators
from fairseq_cli import train

run = {}  # the entry of RUNS.json being run: its shard, and the updates recorded so far
current = []  # the EpochBatchIterator fairseq-train iterates now
Trainer = fairseq_trainer.Trainer
original_get_train_iterator = Trainer.get_train_iterator
original_next_epoch_itr = iterators.EpochBatchIterator.next_epoch_itr


def get_train_iterator(self, *args, **kwargs):
    get_batch_iterator = self.task.get_batch_iterator

    def sharded(*a, **kw):
        return get_batch_iterator(*a, **{**kw, "num_shards": run["num_shards"], "shard_id": run["shard"]})

    self.task.get_batch_iterator = sharded
    try:
        return original_get_train_iterator(self, *args, **kwargs)
    finally:
        del self.task.get_batch_iterator


def next_epoch_itr(self, *args, **kwargs):
    current[:] = [self]
    return original_next_epoch_itr(self, *args, **kwargs)


def train_step(self, samples, raise_oom=False):
    empty = torch.zeros(0, 0, dtype=torch.long)
    batches = [
        {"tokens": s["net_input"]["src_tokens"].clone(), "targets": s["target"].clone(), "ntokens": int(s["ntokens"])}
        if s
        else {"tokens": empty, "targets": empty, "ntokens": 0}
        for s in samples
    ]
    run["updates"].append({"epoch": current[0].epoch, "samples": batches, "state": current[0].state_dict()})
    return None


Trainer.get_train_iterator, Trainer.train_step = get_train_iterator, train_step
iterators.EpochBatchIterator.next_epoch_itr = next_epoch_itr
with open(sys.argv[1], encoding="utf-8") as f:
    runs = json.load(f)
for entry in runs:
    run.clear()
    run.update(shard=int(entry["shard"]), num_shards=int(entry["num_shards"]), updates=[])
    current.clear()
    sys.argv = ["fairseq-train", *map(str, entry["args"])]
    train.cli_main()
    torch.save({"updates": run["updates"]}, entry["out"])
