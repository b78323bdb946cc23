"""Batches for data-parallel training: seeded epoch-aware shuffling, DP sharding, exact resume.

The global order of an epoch is ``default_rng([seed, epoch]).permutation(len(dataset))`` (or
``arange`` without shuffling). Global batch k is positions ``[k*G, (k+1)*G)`` with
``G = batch_size * dp_size``; DP rank r takes the r-th ``batch_size`` slice of it. The order
depends only on (seed, epoch, len(dataset)), so the TP and PP ranks of one replica (same
``dp_rank``) get identical batches, and a run resumed from ``state_dict()`` continues with
exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from adaptive_lm_ds.data.errors import DataError

PAD = 1


def collate(samples: Sequence[dict[str, np.ndarray]], batch_size: int, length: int, pad: int = PAD) -> dict:
    """Stack samples into a fixed ``[batch_size, length]`` batch (fixed shapes suit pipelines).

    Missing rows and positions are padding: ``tokens``/``targets`` = ``pad`` (ignored by the loss);
    ``segment_ids`` (when the samples have them) continue with one extra segment per row, so
    padding never joins a real sentence's attention block. Returns int64 tensors ``tokens``,
    ``targets`` [B,T], optional ``segment_ids`` [B,T], and ``ntokens`` (int, real targets).
    """
    tokens = np.full((batch_size, length), pad, dtype=np.int64)
    targets = np.full((batch_size, length), pad, dtype=np.int64)
    with_segments = bool(samples) and "segment_ids" in samples[0]
    segments = np.zeros((batch_size, length), dtype=np.int64) if with_segments else None
    ntokens = 0
    for row, sample in enumerate(samples):
        n = len(sample["targets"])
        if n > length:
            raise DataError(f"a sample has {n} tokens, more than the batch length {length}")
        tokens[row, :n] = sample["tokens"]
        targets[row, :n] = sample["targets"]
        if segments is not None:
            segments[row, :n] = sample["segment_ids"]
            segments[row, n:] = sample["segment_ids"][-1] + 1 if n else 0
        ntokens += n
    batch = {"tokens": torch.from_numpy(tokens), "targets": torch.from_numpy(targets), "ntokens": ntokens}
    if segments is not None:
        batch["segment_ids"] = torch.from_numpy(segments)
    return batch


class RankBatchIterator:
    """What every iterator of a data-parallel rank's micro batches shares (this one and fairseq's order,
    :class:`~adaptive_lm_ds.data.fairseq_order.FairseqBatchIterator`): the fixed ``[batch_size, length]``
    batches it collates from ``dataset``, its place among ``dp_size`` ranks, and where it is (``position``:
    batches already yielded in ``epoch``). A subclass says which samples make its k-th batch of an epoch
    (:meth:`batch_indices`) and how many batches an epoch has (``__len__``).
    """

    def __init__(self, dataset, batch_size: int, dp_rank: int, dp_size: int, seed: int, shuffle: bool,
                 length: int | None, pad: int) -> None:  # fmt: skip
        self.dataset, self.batch_size, self.dp_rank, self.dp_size = dataset, batch_size, dp_rank, dp_size
        self.seed, self.shuffle, self.pad = seed, shuffle, pad
        self.length = length or dataset.tokens_per_sample
        self.epoch, self.position = 0, 0

    @property
    def global_batch_size(self) -> int:
        """Rows of one micro batch step over all DP ranks (fairseq's batches may fill fewer of them)."""
        return self.batch_size * self.dp_size

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (0-based) from its first batch."""
        self.epoch, self.position = epoch, 0

    def batch_indices(self, epoch: int, k: int) -> np.ndarray:
        """Sample indices (into ``dataset``) of this rank's k-th batch of ``epoch``."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        """The rest of the current epoch's batches; then the next epoch starts."""
        while self.position < len(self):
            indices = self.batch_indices(self.epoch, self.position)
            batch = collate([self.dataset[int(i)] for i in indices], self.batch_size, self.length, self.pad)
            self.position += 1
            yield batch
        self.set_epoch(self.epoch + 1)


class LMBatchIterator(RankBatchIterator):
    """Iterates this DP rank's batches of an :class:`LMBlockDataset`-like dataset.

    ``for batch in it`` yields the rest of the current epoch, then moves to the next epoch
    (``set_epoch`` jumps anywhere). Every rank yields ``len(it)`` batches per epoch. With
    ``drop_last`` the incomplete last global batch is skipped; without it, it is spread over the
    ranks and rows beyond the data are all padding (``ntokens`` counts real targets only).
    Batches are ``[batch_size, length]`` with ``length = dataset.tokens_per_sample`` by default.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        length: int | None = None,
        pad: int = PAD,
    ) -> None:
        if batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise DataError(f"need batch_size >= 1 and 0 <= dp_rank < dp_size, got {batch_size}, {dp_rank}, {dp_size}")
        super().__init__(dataset, batch_size, dp_rank, dp_size, seed, shuffle, length, pad)
        self.drop_last = drop_last
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        n, g = len(self.dataset), self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global sample order of ``epoch`` (int64 [len(dataset)]); the same on every rank."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.dataset)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (epoch, order)
        return self._order[1]

    def batch_indices(self, epoch: int, k: int) -> np.ndarray:
        """Sample indices of this rank's k-th batch in ``epoch`` (may be short at the very end)."""
        start = k * self.global_batch_size + self.dp_rank * self.batch_size
        return self.epoch_order(epoch)[start : start + self.batch_size]

    def state_dict(self) -> dict:
        """Position to resume from exactly (plain ints, checkpoint friendly)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "global_batch_size": self.global_batch_size,
            "num_samples": len(self.dataset),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state`` (a :meth:`state_dict`, of any global batch size: converted through samples);
        refuses a state whose order would differ (other data, seed or shuffling, or fairseq's batch order)."""
        _refuse_other_order(state)
        self.seek({**state, "samples": int(state["position"]) * int(state["global_batch_size"])})

    def seek(self, position: dict, update_samples: int | None = None) -> None:
        """Continue after ``position["samples"]`` samples of epoch ``position["epoch"]``'s order, rounded down to a
        whole ``update_samples`` (default: one global batch) so that updates stay whole.

        ``position`` may also name the ``seed``, ``shuffle`` and ``num_samples`` it was counted under; a
        different one is refused, as its order differs.
        """
        _refuse_other_order(position)
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_samples"):
            if key in position and position[key] != mine[key]:
                raise DataError(
                    f"cannot resume the data iterator exactly: saved {key}={position[key]} but now {mine[key]}; "
                    "use the same data and seed"
                )
        whole = update_samples or self.global_batch_size
        samples = int(position["samples"]) // whole * whole
        self.epoch, self.position = int(position["epoch"]), samples // self.global_batch_size


def _refuse_other_order(state: dict) -> None:
    """A position counted in another batch order (``--batch-order fairseq`` saves ``order``) means other batches."""
    if state.get("order", "ours") != "ours":
        raise DataError(
            f"the checkpoint's data position is for --batch-order {state['order']}, not ours; resume with "
            f"--batch-order {state['order']}, or pass --reset-dataloader to start this order from the beginning"
        )
