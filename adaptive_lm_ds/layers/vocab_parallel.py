"""The shared vocabulary-parallel maths: row-sharded band tables, masked lookup, distributed log-softmax.

A band of ``size`` rows is padded to ``rows_per_rank * tp`` rows and TP rank ``r`` holds rows
``[r * rows_per_rank, (r + 1) * rows_per_rank)``. Padding rows are never looked up (ids are checked
against the band) and their logits are ``-inf`` (they never win and take no probability mass).

Communication follows megatron-core's conventions (and reuses its autograd mappings): the loss is
replicated over the TP group, every rank back-propagates into its own shard only.

* ``copy_to_tensor_model_parallel_region`` (identity forward, all-reduce backward) goes in front of a
  replicated tensor that meets a sharded one: its gradient is a sum over the shards.
* ``reduce_from_tensor_model_parallel_region`` (all-reduce forward, identity backward) sums the
  per-shard partial results into a replicated tensor.

The log-normaliser is megatron-core's ``vocab_parallel_cross_entropy`` recipe (all-reduced max, then
all-reduced sum of exponentials) written with those mappings rather than called, because the adaptive
head also has *replicated* cluster logits that must enter the normaliser once, not once per rank, and
because evaluation needs the normaliser itself (full log-probability tables), not only the loss.
The training loss takes the fused path instead (``layers/cross_entropy.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.tensor_parallel import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

from adaptive_lm_ds.layers import seeded_init


@dataclass(frozen=True)
class VocabShard:
    """Which rows of a ``size``-row band TP rank ``tp_rank`` of ``tp_size`` holds."""

    size: int
    tp_size: int
    tp_rank: int

    @property
    def rows_per_rank(self) -> int:
        return -(-self.size // self.tp_size)

    @property
    def start(self) -> int:
        return self.tp_rank * self.rows_per_rank

    @property
    def real_rows(self) -> int:
        """Rows of this shard that are vocabulary entries (the rest is padding)."""
        return max(0, min(self.rows_per_rank, self.size - self.start))

    @property
    def padded_size(self) -> int:
        return self.rows_per_rank * self.tp_size


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Identity forward; gradient all-reduced over TP (a replicated tensor meeting a shard)."""
    return copy_to_tensor_model_parallel_region(x, group=group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """All-reduce (sum) over TP forward; identity backward."""
    return reduce_from_tensor_model_parallel_region(x, group=group)


class VocabParallelTable(nn.Module):
    """This TP rank's rows of one band: ``weight`` is ``[rows_per_rank, dim]`` (padding rows last).

    Used as an embedding (:meth:`lookup`) and as an output layer (:meth:`local_logits`); a tied band
    uses the same module for both. ``padding_row`` (band-local) is fairseq's ``nn.Embedding``
    ``padding_idx``: looked up as stored, but lookups send it no gradient.
    """

    def __init__(self, band_size: int, dim: int, tp_group, padding_row: int | None = None):
        super().__init__()
        self.tp_group = tp_group
        self.shard = VocabShard(band_size, tp_group.size(), tp_group.rank())
        self.dim = dim
        self.padding_row = padding_row
        self.weight = nn.Parameter(torch.empty(self.shard.rows_per_rank, dim))
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    # ------------------------------------------------------------------ initialisation
    def init_normal(self, std: float, key: str, zero_rows: tuple[int, ...] = ()) -> None:
        """N(0, std) on this shard's rows of the keyed table (``seeded_init``); ``zero_rows`` band-local."""
        self._init(seeded_init.normal_rows(std, self.dim), key, zero_rows)

    def init_uniform(self, bound: float, key: str) -> None:
        self._init(seeded_init.uniform_rows(bound, self.dim), key, ())

    def _init(self, sample: seeded_init.RowSampler, key: str, zero_rows: tuple[int, ...]) -> None:
        if self.weight.is_meta:
            return
        seeded_init.fill_rows(self.weight, self.shard.start, self.shard.real_rows, key, sample)
        with torch.no_grad():
            for row in zero_rows:
                if 0 <= row - self.shard.start < self.shard.real_rows:
                    self.weight[row - self.shard.start].zero_()

    # ------------------------------------------------------------------ input side
    def lookup(self, band_ids: torch.Tensor, in_band: torch.Tensor) -> torch.Tensor:
        """Partial vectors ``[N, dim]``: the row for ids this rank holds, zeros elsewhere.

        ``band_ids`` are ids minus the band start (any value where ``in_band`` is false).
        """
        local = band_ids - self.shard.start
        owned = in_band & (local >= 0) & (local < self.shard.real_rows)
        pad = None
        if self.padding_row is not None and 0 <= self.padding_row - self.shard.start < self.shard.real_rows:
            pad = self.padding_row - self.shard.start
        vectors = F.embedding(torch.where(owned, local, 0), self.weight, padding_idx=pad)
        return vectors * owned.unsqueeze(-1).to(vectors.dtype)

    # ------------------------------------------------------------------ output side
    def raw_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, rows_per_rank]`` logits of this shard for replicated ``h`` ``[N, dim]``, padding unmasked."""
        return F.linear(copy_to_tp(h, self.tp_group), self.weight)

    def local_logits(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`raw_logits` with the padding columns ``-inf``."""
        logits = self.raw_logits(h)
        if self.shard.real_rows < self.shard.rows_per_rank:
            pad = torch.arange(self.shard.rows_per_rank, device=h.device) >= self.shard.real_rows
            logits = logits.masked_fill(pad, float("-inf"))
        return logits

    def target_columns(self, band_targets: torch.Tensor, in_band: torch.Tensor | None = None) -> torch.Tensor:
        """``[N]`` local column of each (in-band) target this rank holds, -1 elsewhere (for the fused loss)."""
        local = band_targets - self.shard.start
        owned = (local >= 0) & (local < self.shard.real_rows)
        if in_band is not None:
            owned &= in_band
        return torch.where(owned, local, -1)


def log_normalizer(local_logits: torch.Tensor, group, replicated_logits: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` fp32 ``logsumexp`` over all shards' ``local_logits`` plus the replicated logits (once).

    Each rank reduces its shard with the fused ``torch.logsumexp`` (no ``[N, rows]`` temporaries of
    its own); the per-rank results combine through an all-reduced max and sum of exponentials of
    ``[N]`` tensors only.
    """
    local = local_logits.float()
    if local.shape[0] == 0:  # same on every TP rank (the token set is replicated): skip the collectives
        return local.sum(-1)
    lse = torch.logsumexp(local, -1)
    if group.size() > 1:
        maximum = lse.detach().clone()
        dist.all_reduce(maximum, op=dist.ReduceOp.MAX, group=group)
        # clone: megatron's all-reduce is in place, and exp's backward reads its saved output
        lse = maximum + torch.log(reduce_from_tp(torch.exp(lse - maximum).clone(), group))
    if replicated_logits is not None:
        lse = torch.logaddexp(lse, torch.logsumexp(replicated_logits.float(), -1))
    return lse


def xavier_bound(fan_in: int, fan_out: int) -> float:
    """``nn.init.xavier_uniform_``'s bound, for initialising a shard of a matrix no rank holds whole."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def gather_band_columns(shard: torch.Tensor, bands: list[VocabShard], group) -> torch.Tensor:
    """Reassemble ``[..., V]`` from every rank's ``[..., sum(rows_per_rank)]`` (concatenated bands).

    Materialises the whole vocabulary on every rank: for tests and small-vocabulary checks only.
    """
    pieces = [shard]
    if group.size() > 1:
        pieces = [torch.empty_like(shard) for _ in range(group.size())]
        dist.all_gather(pieces, shard.contiguous(), group=group)
    out, offset = [], 0
    for band in bands:
        cols = torch.cat([p[..., offset : offset + band.rows_per_rank] for p in pieces], dim=-1)
        out.append(cols[..., : band.size])
        offset += band.rows_per_rank
    return torch.cat(out, dim=-1)
