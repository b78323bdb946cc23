"""Layout-invariant parameter initialisation: every tensor drawn from its own seeded stream.

The same ``--seed`` must give the same model in every layout (TP, PP, DP and their products), as
torchtitan's DTensor random ops and Megatron's CPU initialisation do. Drawing from the default
generator would not: what a rank draws depends on what it built before (a pipeline stage builds only
its own layers; a TP rank only its shard). Instead every parameter has a stable *key* (its role in the
one-piece model, e.g. ``"layers.3.ffn.fc1"``), and its values come from a ``torch.Generator`` seeded
with ``hash(seed, key)``, whatever else the rank builds.

* A replicated tensor, or a megatron linear (whose CPU initialisation builds the full master matrix on
  every TP rank and keeps its slice), is drawn whole from ``generator(key)``.
* A vocabulary table is drawn in blocks of :data:`ROWS_PER_BLOCK` rows, block ``b`` from
  ``generator(key, b)``. A TP shard draws only the blocks overlapping its rows (never the whole
  793k-row table of gbw_huge) and gets exactly the single-process rows.
* The tied tables' key is the band's (``bands.{i}.table``), so the copies a pipeline's first and last
  stages build start equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from adaptive_lm_ds import parallel

ROWS_PER_BLOCK = 1024

# sample(rows, generator) -> [rows, dim] fp32 values of one block of a table
RowSampler = Callable[[int, torch.Generator], torch.Tensor]


def init_seed() -> int:
    """The run's seed (``initialize_parallel``'s); outside a parallel context the default generator's."""
    try:
        return parallel.current().seed
    except parallel.ParallelNotInitialized:
        return torch.initial_seed()


def generator(key: str, block: int = 0) -> torch.Generator:
    """A CPU generator seeded by ``(seed, key, block)`` only (blake2b of the three, 63 bits)."""
    digest = hashlib.blake2b(f"{init_seed()}/{key}/{block}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def xavier_uniform(key: str, gain: float = 1.0) -> Callable[[torch.Tensor], None]:
    """``init_method`` filling a *full* matrix (a replicated ``Linear``, megatron's master weight)."""

    def init(weight: torch.Tensor) -> None:
        if not weight.is_meta:
            nn.init.xavier_uniform_(weight, gain=gain, generator=generator(key))

    return init


def linear_default(key: str) -> Callable[[torch.Tensor], None]:
    """``init_method`` of ``nn.Linear``'s own weight init on a full ``[out, in]`` matrix.

    ``kaiming_uniform_(a=sqrt(5))`` is U(-1/sqrt(in), 1/sqrt(in)); fairseq's FFN (``fc1``, ``fc2``)
    keeps it. At FFN 8192 it is 2.2x smaller than xavier for ``fc2`` (docs/model.md, initial loss).
    """

    def init(weight: torch.Tensor) -> None:
        if not weight.is_meta:
            bound = weight.shape[1] ** -0.5
            nn.init.uniform_(weight, -bound, bound, generator=generator(key))

    return init


@torch.no_grad()
def linear_bias(bias: torch.Tensor, fan_in: int, start: int, full_size: int, key: str) -> None:
    """``nn.Linear``'s default bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on entries ``[start, start + len)``.

    The whole ``[full_size]`` vector is drawn from ``generator(key)``, so a column-parallel shard is the
    single-process slice.
    """
    if not bias.is_meta:
        bound = fan_in**-0.5
        full = torch.empty(full_size).uniform_(-bound, bound, generator=generator(key))
        bias.copy_(full[start : start + bias.numel()])


def uniform(weight: torch.Tensor, bound: float, key: str) -> None:
    """U(-bound, bound) on a full (replicated) tensor."""
    if not weight.is_meta:
        nn.init.uniform_(weight, -bound, bound, generator=generator(key))


def normal_rows(std: float, dim: int) -> RowSampler:
    return lambda rows, gen: torch.empty(rows, dim).normal_(0.0, std, generator=gen)


def uniform_rows(bound: float, dim: int) -> RowSampler:
    return lambda rows, gen: torch.empty(rows, dim).uniform_(-bound, bound, generator=gen)


@torch.no_grad()
def fill_rows(
    weight: torch.Tensor, start: int, real_rows: int, key: str, sample: RowSampler, block_rows: int = ROWS_PER_BLOCK
) -> None:
    """``weight[:real_rows]`` = rows ``[start, start + real_rows)`` of the keyed table; the rest zero.

    ``weight`` ``[rows_per_rank, dim]`` is one TP shard (padding rows last); only the blocks that
    overlap its rows are drawn.
    """
    weight.zero_()
    end = start + real_rows
    for block in range(start // block_rows, -(-end // block_rows)):
        lo = block * block_rows
        values = sample(block_rows, generator(key, block))
        a, b = max(lo, start), min(lo + block_rows, end)
        weight[a - start : b - start].copy_(values[a - lo : b - lo])
