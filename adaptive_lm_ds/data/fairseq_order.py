"""fairseq-train's batch order: the very micro batches fairseq would feed each data-parallel rank.

Why: to take over a fairseq run mid-schedule on the batches it would have used, and to give
``fairseq-train`` and our trainer one command line that trains on the same batches. fairseq builds an
epoch (1-based ``e``) as ``tasks/fairseq_task.get_batch_iterator`` and ``data/iterators.py`` do:

1. under ``numpy_seed(seed + e0)``: ``MonolingualDataset.ordered_indices`` =
   ``lexsort([permutation(n), sizes])`` over all ``n`` blocks of ``TokenBlockDataset`` (by size, ties random).
   ``e0`` is the epoch the process started in (1, or the epoch of the checkpoint it resumed): the task
   caches the iterator, so these batches stay frozen for the rest of the process;
2. ``filter_indices_by_size``: blocks longer than ``max_positions`` (the model's positions, which
   fairseq's ``transformer_lm`` sets to ``--tokens-per-sample``, and ``--max-tokens``) are left out;
3. ``batch_by_size`` (the Cython ``batch_by_size_vec``) cuts that order into batches under
   ``--max-tokens``, ``--batch-size`` and ``--required-batch-size-multiple`` and drops a last batch
   whose size is not a multiple of the latter;
4. under ``numpy_seed(seed + e)``: ``np.random.shuffle`` of the batch list (``EpochBatchIterator``);
5. ``ShardedIterator``: rank r of N takes batches r, r+N, ..., padded with empty batches to
   ``ceil(len / N)`` (fairseq trains an empty batch as a dummy whose loss counts zero);
6. fairseq-train groups ``--update-freq`` micro batches into an update; an epoch's last group may be
   short. Here it is filled with empty batches instead, so every update has ``update_freq`` micro batches.

Steps 2-3 depend only on the sorted sizes, so the batch boundaries are computed once; step 1 is redone
only when ``e0`` changes, steps 4 and 5 every epoch. Batches have fixed shape
``[batch_size, length]`` as :class:`~adaptive_lm_ds.data.sampler.LMBatchIterator`'s: fairseq's rows
first (in fairseq's row order), the rest ``<pad>`` (targets too, so the loss ignores them).
"""

from __future__ import annotations

import numpy as np

from adaptive_lm_ds.data.blocks import block_bounds
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.sampler import PAD, RankBatchIterator
from adaptive_lm_ds.interop.fairseq_cfg import fairseq_defaults

FAIRSEQ_BREAK_MODES = ("none", "complete", "eos")


def batch_split_points(num_tokens: list[int], max_tokens: int, max_sentences: int, bsz_mult: int) -> list[int]:
    """Where fairseq's ``batch_by_size_vec`` splits a size-ordered list (``np.split`` points, no 0 or n).

    ``num_tokens``: the sizes in batching order; ``max_tokens`` / ``max_sentences`` <= 0 mean no limit.
    A line-by-line port of fairseq's ``data/data_utils_fast.pyx`` (its comments explain the tail rule).
    """
    n = len(num_tokens)
    if n == 0:
        return []
    ends = [0] * (n + 1)
    count = batch_start = tail_max = batch_max = 0
    for pos in range(n):
        size = num_tokens[pos]
        tail_max = tail_max if tail_max > size else size
        new_end = pos + 1
        new_max = batch_max if batch_max > tail_max else tail_max
        new_sentences = new_end - batch_start
        overflow = (max_sentences > 0 and new_sentences > max_sentences) or (
            max_tokens > 0 and new_sentences * new_max > max_tokens
        )
        if overflow:
            if max_tokens > 0 and tail_max * (new_end - ends[count]) > max_tokens:  # the tail alone overflows
                count += 1
                ends[count] = pos
                tail_max = size
            batch_start = ends[count]
            count += 1
            new_max = tail_max
        if overflow or new_sentences < bsz_mult or new_sentences % bsz_mult == 0:
            ends[count] = new_end
            batch_max = new_max
            tail_max = 0
    if ends[count] != n:
        count += 1
    return ends[:count]


def _fairseq_sizes(dataset) -> tuple[np.ndarray, np.ndarray]:
    """fairseq's block sizes (int64 [all blocks], oversize ones included) and each block's index in ``dataset``
    (-1 for the oversize blocks our dataset left out)."""
    sizes = np.asarray(dataset.sizes, dtype=np.int64)
    if not getattr(dataset, "num_dropped", 0):
        return sizes, np.arange(len(sizes), dtype=np.int64)
    starts, ends = block_bounds(dataset.data.sentence_offsets, dataset.tokens_per_sample, dataset.break_mode)
    full = ends - starts
    kept = full <= dataset.tokens_per_sample
    ours = np.where(kept, np.cumsum(kept) - 1, -1)
    if int(kept.sum()) != len(sizes):
        raise DataError("the dataset's blocks do not match its break mode; rebuild it with build_lm_dataset")
    return full, ours


class FairseqBatchIterator(RankBatchIterator):
    """This DP rank's micro batches in fairseq-train's order; the interface of ``LMBatchIterator``.

    ``epoch`` is 0-based as ours (fairseq's epoch ``epoch + 1``); ``position`` counts the micro batches
    yielded in this epoch (fills included). ``max_tokens`` / ``max_sentences`` are fairseq's
    ``--max-tokens`` / ``--batch-size`` (0: not given), ``required_batch_size_multiple`` its flag of that
    name (None: fairseq's default, 8); ``batch_size`` is the rows of every yielded batch
    and must hold fairseq's largest batch (checked here, once).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 1,
        *,
        max_tokens: int = 0,
        max_sentences: int = 0,
        required_batch_size_multiple: int | None = None,
        update_freq: int = 1,
        shuffle: bool = True,
        length: int | None = None,
        pad: int = PAD,
    ) -> None:
        if batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size or update_freq < 1:
            raise DataError(
                f"need batch_size, update_freq >= 1 and 0 <= dp_rank < dp_size, got {batch_size}, {update_freq}, "
                f"{dp_rank}, {dp_size}"
            )
        if required_batch_size_multiple is None:  # fairseq-train's default
            required_batch_size_multiple = fairseq_defaults()["cfg"]["dataset"]["required_batch_size_multiple"]
        if required_batch_size_multiple < 1:
            raise DataError(f"--required-batch-size-multiple must be >= 1, got {required_batch_size_multiple}")
        if max_tokens <= 0 and max_sentences <= 0:
            raise DataError("fairseq's batch order needs --max-tokens or --batch-size")
        super().__init__(dataset, batch_size, dp_rank, dp_size, seed, shuffle, length, pad)
        self.update_freq = update_freq
        self.max_positions = min(self.length, max_tokens) if max_tokens > 0 else self.length
        self.sizes, self.our_index = _fairseq_sizes(dataset)
        kept_sizes = np.sort(self.sizes[self.sizes <= self.max_positions])
        points = batch_split_points(kept_sizes.tolist(), max_tokens, max_sentences, required_batch_size_multiple)
        rows = np.diff([0, *points, len(kept_sizes)]) if len(kept_sizes) else np.zeros(0, np.int64)
        self.num_batches = len(rows)  # global batches per epoch
        if required_batch_size_multiple > 1 and len(kept_sizes) and rows[-1] % required_batch_size_multiple:
            self.num_batches -= 1  # fairseq drops such a last batch
        self._points = np.asarray(points, dtype=np.int64)
        largest = int(rows[: self.num_batches].max()) if self.num_batches else 0
        if largest > batch_size:
            raise DataError(
                f"fairseq's batches hold up to {largest} samples (--max-tokens {max_tokens} over samples shorter "
                f"than --tokens-per-sample), more than the {batch_size} rows of a micro batch here; "
                f"give both programs --batch-size {batch_size} to cap fairseq's batches"
            )
        self.frozen_epoch = 0  # fairseq's e0 - 1: the epoch whose seed grouped the samples into batches
        self._frozen: tuple[int, list[np.ndarray]] | None = None
        self._shard: tuple[int, int, list[np.ndarray]] | None = None

    @property
    def shard_length(self) -> int:
        """fairseq's micro batches per rank per epoch: ``ceil(num_batches / dp_size)``."""
        return -(-self.num_batches // self.dp_size)

    def __len__(self) -> int:
        return -(-self.shard_length // self.update_freq) * self.update_freq

    def frozen_batches(self) -> list[np.ndarray]:
        """fairseq's batches before shuffling, as its block indices (int64 arrays), grouped under ``frozen_epoch``."""
        if self._frozen is None or self._frozen[0] != self.frozen_epoch:
            permutation = np.random.RandomState(self.seed + self.frozen_epoch + 1).permutation(len(self.sizes))
            order = np.lexsort([permutation, self.sizes])
            order = order[self.sizes[order] <= self.max_positions]
            self._frozen = (self.frozen_epoch, np.split(order, self._points)[: self.num_batches])
        return self._frozen[1]

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """All ranks' batches of ``epoch`` in fairseq's order, as fairseq's block indices (int64 arrays)."""
        batches = list(self.frozen_batches())
        if self.shuffle:
            np.random.RandomState(self.seed + epoch + 1).shuffle(batches)
        return batches

    def shard(self, epoch: int) -> list[np.ndarray]:
        """This rank's micro batches of ``epoch`` (our dataset's indices), filled with empty ones to ``len(self)``."""
        if self._shard is None or self._shard[:2] != (epoch, self.frozen_epoch):
            mine = [self.our_index[b] for b in self.epoch_batches(epoch)[self.dp_rank :: self.dp_size]]
            empty = np.zeros(0, dtype=np.int64)
            self._shard = (epoch, self.frozen_epoch, mine + [empty] * (len(self) - len(mine)))
        return self._shard[2]

    def batch_indices(self, epoch: int, k: int) -> np.ndarray:
        """Our dataset's indices of this rank's k-th micro batch of ``epoch`` (empty for a fill)."""
        return self.shard(epoch)[k]

    # ------------------------------------------------------------------ state
    def _resume_at(self, epoch: int, position: int, saved_dp_size: int) -> None:
        """Continue after ``position`` micro batches per rank of ``epoch`` at ``saved_dp_size`` ranks: the same
        global batches consumed, re-divided over this iterator's ranks."""
        consumed = min(position, -(-self.num_batches // saved_dp_size)) * saved_dp_size
        if consumed >= self.num_batches:
            self.set_epoch(epoch + 1)
            return
        if consumed % self.dp_size:
            raise DataError(
                f"cannot continue the batch order exactly: {consumed} batches of epoch {epoch + 1} were used, "
                f"which {self.dp_size} data-parallel ranks cannot split evenly; resume at a DP size dividing it"
            )
        self.epoch, self.position = epoch, consumed // self.dp_size

    def state_dict(self) -> dict:
        """Position to resume from exactly (plain ints, checkpoint friendly)."""
        return {
            "order": "fairseq",
            "epoch": self.epoch,
            "position": self.position,
            "frozen_epoch": self.frozen_epoch,
            "dp_size": self.dp_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": len(self.sizes),
            "num_batches": self.num_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state`` (any DP size that splits the consumed batches); refuses another data order."""
        if state.get("order") != "fairseq":
            raise DataError(
                "the checkpoint's data position is for --batch-order ours, not fairseq's order; resume with "
                "--batch-order ours, or pass --reset-dataloader to start fairseq's order from the beginning"
            )
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_samples", "num_batches"):
            if state[key] != mine[key]:
                raise DataError(
                    f"cannot resume fairseq's batch order exactly: saved {key}={state[key]} but now {mine[key]}; "
                    "use the same data, seed, --max-tokens/--batch-size and --required-batch-size-multiple"
                )
        self.frozen_epoch = int(state["frozen_epoch"])
        self._resume_at(int(state["epoch"]), int(state["position"]), int(state["dp_size"]))

    def fairseq_state(self) -> dict:
        """fairseq's ``extra_state["train_iterator"]`` for this position (what ``EpochBatchIterator.state_dict``
        writes): an exhausted epoch is saved as the next epoch's start. fairseq resumed from it groups its
        batches under the saved epoch's seed (``frozen_epoch`` is not part of fairseq's state)."""
        if self.position >= self.shard_length:
            epoch, iterations = self.epoch + 2, 0
        else:
            epoch, iterations = self.epoch + 1, self.position
        return {"version": 2, "epoch": epoch, "iterations_in_epoch": iterations, "shuffle": self.shuffle}

    def load_fairseq_state(self, state: dict, saved_dp_size: int | None = None) -> None:
        """Continue where a fairseq run's ``extra_state["train_iterator"]`` stopped.

        ``iterations_in_epoch`` counts micro batches per rank, so it means global batches only with the DP size
        of the run that wrote it: ``saved_dp_size`` (default: this iterator's, which is what fairseq assumes).
        As fairseq-train resumed from that state, the batches are grouped anew under the saved epoch's seed.
        """
        epoch = int(state.get("epoch", 1))
        if epoch < 1:
            raise DataError(f"fairseq's train_iterator state has epoch {epoch}; fairseq's epochs start at 1")
        position = int(state.get("iterations_in_epoch", 0))
        saved = saved_dp_size or self.dp_size
        if position > 0 and position >= -(-self.num_batches // saved):
            raise DataError(
                f"fairseq's run was {position} batches into epoch {epoch}, but its epochs have only "
                f"{-(-self.num_batches // saved)} per rank here; use the fairseq run's data, seed, "
                "--max-tokens/--batch-size and --required-batch-size-multiple (or --reset-dataloader)"
            )
        self.shuffle = bool(state.get("shuffle", True))
        self.frozen_epoch = epoch - 1
        self._resume_at(epoch - 1, position, saved)
