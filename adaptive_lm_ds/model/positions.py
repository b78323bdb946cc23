"""fairseq's positional embeddings: numbered from ``padding_idx + 1``, pad tokens at ``padding_idx``.

With ``segment_ids`` (packed sentences) numbering restarts at each new segment, so a packed block sees
the same positions as each sentence alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adaptive_lm_ds.layers import seeded_init


def make_positions(
    tokens: torch.Tensor, padding_idx: int, segment_ids: torch.Tensor | None = None, offset: int = 0
) -> torch.Tensor:
    """``[B, T]`` positions: non-pad tokens count ``padding_idx + 1, ...`` (per segment), pads get ``padding_idx``.

    This is fairseq's ``utils.make_positions`` (cumulative count of non-pad tokens) restarted at every
    change of ``segment_ids``. ``offset``: the number of (non-pad) tokens before these ones, for the
    tokens fed to a decoder that has cached them (fairseq's incremental positions).
    """
    nonpad = tokens.ne(padding_idx).long()
    count = nonpad.cumsum(dim=1)
    if segment_ids is not None:
        starts = torch.ones_like(segment_ids, dtype=torch.bool)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        before = torch.where(starts, count - nonpad, 0)  # non-pad tokens before each segment start
        count = count - before.cummax(dim=1).values
    return (count + offset) * nonpad + padding_idx


class SinusoidalPositions(nn.Module):
    """fairseq's ``SinusoidalPositionalEmbedding``: ``[sin | cos]`` halves, the pad position zero.

    Computed from the positions directly (no stored table), with the same float32 operations as
    fairseq's table, so any length works.
    """

    def __init__(self, dim: int, padding_idx: int):
        super().__init__()
        self.dim, self.padding_idx = dim, padding_idx
        half = dim // 2
        freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
        self.register_buffer("freq", freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.float().unsqueeze(-1) * self.freq
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb.masked_fill(positions.eq(self.padding_idx).unsqueeze(-1), 0.0)


class LearnedPositions(nn.Embedding):
    """fairseq's ``LearnedPositionalEmbedding``: ``max_positions + padding_idx + 1`` rows, N(0, d**-0.5)."""

    def __init__(self, max_positions: int, dim: int, padding_idx: int):
        super().__init__(max_positions + padding_idx + 1, dim, padding_idx=padding_idx)
        if not self.weight.is_meta:
            nn.init.normal_(self.weight, mean=0.0, std=dim**-0.5, generator=seeded_init.generator("embed.positions"))
            with torch.no_grad():
                self.weight[padding_idx].zero_()
