"""Vocabulary-parallel adaptive input (Baevski & Auli 2019) with fairseq's ``AdaptiveInput`` semantics.

**Tied weights** are owned by :class:`BandWeights` (every band's table and input projection, nothing
else), which the input layer and the adaptive softmax both hold as ``bands``; how tying works in one
piece, across pipeline stages and on disk: docs/model.md, "Tying".

fairseq layout (for the checkpoint converter): ``embed_tokens.embeddings.{i}.0.weight`` is band ``i``'s
table ``[n_i, d_i]`` (here split by rows over TP) and ``embed_tokens.embeddings.{i}.1.weight`` its
bias-free projection ``[d, d_i]`` (here ``bands.{i}.proj.weight``, replicated over TP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adaptive_lm_ds.config import Band, ModelConfig
from adaptive_lm_ds.layers import seeded_init
from adaptive_lm_ds.layers.vocab_parallel import VocabParallelTable, copy_to_tp, reduce_from_tp


class BandWeight(nn.Module):
    """One band: its sharded ``table`` ``[rows_per_rank, d_i]`` and optional ``proj`` (``d_i -> d``)."""

    def __init__(self, band: Band, model_dim: int, tp_group, padding_row: int | None, with_proj: bool):
        super().__init__()
        self.band = band
        self.table = VocabParallelTable(band.size, band.dim, tp_group, padding_row)
        self.proj = nn.Linear(band.dim, model_dim, bias=False) if with_proj else None


class BandWeights(nn.ModuleList):
    """The input bands' weights (tables + projections): the tensors that tying shares.

    ``with_proj[i]`` says whether band ``i`` has an input projection. An adaptive input has one on
    every band; a full embedding has none; a last pipeline stage that only needs the tied tail
    projections builds ``[False, True, ...]``.
    """

    def __init__(self, cfg: ModelConfig, tp_group, with_proj: Sequence[bool] | None = None):
        bands = cfg.input_bands()
        if with_proj is None:
            with_proj = [cfg.adaptive_input] * len(bands)
        super().__init__(
            BandWeight(b, cfg.embed_dim, tp_group, cfg.padding_idx if i == 0 else None, with_proj[i])
            for i, b in enumerate(bands)
        )
        self.reset_parameters(cfg)

    def reset_parameters(self, cfg: ModelConfig) -> None:
        """fairseq's init: tables N(0, d_i**-0.5); projections xavier-uniform.

        fairseq's ``AdaptiveInput`` zeroes row ``padding_idx`` of *every* band table at init (its init
        function indexes each table with the global padding index); so do we. Keys ``bands.{i}.*``
        (``seeded_init``) do not depend on the holder, so a pipeline's two copies start equal.
        """
        for i, weight in enumerate(self):
            weight.table.init_normal(weight.band.dim**-0.5, f"bands.{i}.table", zero_rows=(cfg.padding_idx,))
            if weight.proj is not None:
                seeded_init.xavier_uniform(f"bands.{i}.proj")(weight.proj.weight)

    @staticmethod
    def tied_weight_attrs(cfg: ModelConfig, prefix: str = "bands") -> list[str]:
        """Attribute paths (from the layer holding ``bands``) of the tensors the output shares.

        A static method: a pipeline needs the list before any stage builds its module.
        """
        if not cfg.ties_tables:
            return []
        num_bands = len(cfg.input_bands())
        attrs = [f"{prefix}.{i}.table.weight" for i in range(num_bands)]
        if cfg.tie_adaptive_proj:
            attrs += [f"{prefix}.{i}.proj.weight" for i in range(1, num_bands)]
        return attrs


class VocabParallelAdaptiveInput(nn.Module):
    """Token ids ``[...]`` -> ``[..., d]`` (unscaled; the model applies ``sqrt(d)`` and positions).

    Every rank looks up the ids its shards hold (zeros elsewhere), projects each band with the
    replicated projection and sums the bands; one all-reduce over TP then completes every vector.
    Each rank's projection sees only its own rows, so its gradient is a partial sum: the projection
    weight enters through ``copy_to_tp`` (identity forward, all-reduce backward), which makes the
    gradient the full sum on every rank — equal to TP = 1.
    """

    def __init__(self, cfg: ModelConfig, tp_group, bands: BandWeights | None = None):
        super().__init__()
        self.tp_group = tp_group
        self.bands = bands if bands is not None else BandWeights(cfg, tp_group)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.reshape(-1)
        out = None
        for weight in self.bands:
            in_band = (ids >= weight.band.start) & (ids < weight.band.end)
            vectors = weight.table.lookup(ids - weight.band.start, in_band)
            if weight.proj is not None:
                vectors = F.linear(vectors, copy_to_tp(weight.proj.weight, self.tp_group))
            out = vectors if out is None else out + vectors
        out = reduce_from_tp(out, self.tp_group)
        return out.view(*tokens.shape, -1)
