"""Vocabulary-parallel adaptive softmax (Grave et al. 2017) with fairseq's ``AdaptiveSoftmax`` semantics.

The head scores the band-0 words plus one logit per tail cluster (fairseq's head output is
``[words..., clusters...]``); tail ``i`` (vocabulary band ``i + 1``) projects ``d -> d_{i+1}``, applies
``adaptive_softmax_dropout``, and scores its band's words. ``log p(w in tail i) = log p_head(cluster i)
+ log p_tail_i(w)``. With ``adaptive_softmax`` off the same class is the full (vocabulary-parallel)
softmax: one band, no clusters, no tails.

Every band's word table is split by rows over TP (:class:`VocabParallelTable`); the cluster logits and
the tail projections are replicated and enter the normaliser once.

fairseq layout (for the converter):

* untied: ``head.weight [n_0 + k, d]`` rows ``[:n_0]`` -> ``tables.0.weight`` (sharded), rows ``[n_0:]``
  -> ``cluster_proj.weight``; ``tail.{i}.0.weight [d_i, d]`` -> ``tail_projs.{i}.weight``;
  ``tail.{i}.2.weight [n_i, d_i]`` -> ``tables.{i+1}.weight``.
* tied (``tie_adaptive_weights``): ``head.word_proj`` and ``tail.{i}.2`` are ``bands.{j}.table``;
  ``head.class_proj.weight`` -> ``cluster_proj.weight``; with ``tie_adaptive_proj`` ``tail.{i}.0.weight``
  is ``bands.{i+1}.proj.weight`` ``[d, d_i]`` applied transposed, otherwise ``tail_projs.{i}.weight``.
* full softmax: ``output_projection.weight [V, d]`` -> ``tables.0.weight``, or the embedding when
  ``share_input_output_embed``.

Shard layout of :meth:`log_probs`: for every band in order, this rank's ``rows_per_rank`` columns
(band rows ``[r * rows_per_rank, (r + 1) * rows_per_rank)``, padding columns ``-inf``), concatenated;
:meth:`gather_log_probs` turns that into ``[..., V]``.

**Training criteria** (:attr:`VocabParallelAdaptiveSoftmax.criterion`, ``--criterion``): ``nll`` is the
exact negative log-likelihood of every non-pad target. ``adaptive_loss`` is fairseq's criterion of that
name, bit for bit: fairseq scores tail ``i`` with ``F.cross_entropy(..., ignore_index=padding_idx)`` on
the *tail-local* target ``id - start_i``, so a word whose tail-local index equals ``padding_idx``
(ids ``start_i + 1``) keeps only its head (cluster) term, in the loss and in its gradient. Both
criteria count the same tokens; evaluation (log-prob tables, ``target_log_probs``) is always exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.layers import seeded_init
from adaptive_lm_ds.layers.adaptive_input import BandWeights
from adaptive_lm_ds.layers.cross_entropy import vocab_parallel_log_prob
from adaptive_lm_ds.layers.dropout import dropout
from adaptive_lm_ds.layers.vocab_parallel import (
    VocabParallelTable,
    VocabShard,
    gather_band_columns,
    log_normalizer,
    xavier_bound,
)

CRITERIA = ("adaptive_loss", "nll")


class VocabParallelAdaptiveSoftmax(nn.Module):
    """Hidden states ``[N, d]`` -> exact per-token log-probabilities, loss, or this rank's table shard.

    ``bands``: the input layer's :class:`BandWeights` to share when the config ties tables; when
    ``None`` and tying is on (a separate last pipeline stage) an own copy with the same attribute paths
    is built, for DeepSpeed's ``TiedLayerSpec`` to keep equal to the first stage's.
    """

    def __init__(self, cfg: ModelConfig, tp_group, bands: BandWeights | None = None):
        super().__init__()
        self.cfg = cfg
        self.tp_group = tp_group
        self.out_bands = cfg.output_bands()
        self.num_tails = len(self.out_bands) - 1
        d = cfg.embed_dim
        self.bands: BandWeights | None = None
        self.tables: nn.ModuleList | None = None
        if cfg.ties_tables:
            if bands is None:
                bands = BandWeights(cfg, tp_group, with_proj=[False] + [cfg.tie_adaptive_proj] * self.num_tails)
            self.bands = bands
        else:
            self.tables = nn.ModuleList(VocabParallelTable(b.size, b.dim, tp_group) for b in self.out_bands)
        self.cluster_proj = nn.Linear(d, self.num_tails, bias=False) if self.num_tails else None
        self.tail_projs = None
        if not cfg.tie_adaptive_proj:
            self.tail_projs = nn.ModuleList(nn.Linear(d, b.dim, bias=False) for b in self.out_bands[1:])
        self.criterion = "nll"  # or "adaptive_loss" (fairseq's tail rule); set by set_criterion
        self.register_buffer(
            "tail_starts", torch.tensor([b.start for b in self.out_bands[1:]], dtype=torch.long), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq's init of the parameters this layer owns (tied ones belong to the input).

        Each tensor from its own ``seeded_init`` stream (keys ``output.*``): layout-invariant.
        """
        cfg, d, k = self.cfg, self.cfg.embed_dim, self.num_tails
        if self.cluster_proj is not None:
            # untied: one fairseq head matrix [n_0 + k, d] (xavier over the whole); tied: Linear(d, k)
            fan_out = k if cfg.ties_tables else self.out_bands[0].size + k
            seeded_init.uniform(self.cluster_proj.weight, xavier_bound(d, fan_out), "output.cluster_proj")
        if self.tables is not None:
            if not cfg.adaptive_softmax:
                self.tables[0].init_normal(d**-0.5, "output.tables.0")  # fairseq's output_projection init
            else:
                self.tables[0].init_uniform(xavier_bound(d, self.out_bands[0].size + k), "output.tables.0")
                for i, (table, band) in enumerate(zip(self.tables[1:], self.out_bands[1:]), start=1):
                    table.init_uniform(xavier_bound(band.dim, band.size), f"output.tables.{i}")
        for i, proj in enumerate(self.tail_projs or []):
            seeded_init.xavier_uniform(f"output.tail_projs.{i}")(proj.weight)

    # ------------------------------------------------------------------ parts
    def table(self, band: int) -> VocabParallelTable:
        return self.bands[band].table if self.bands is not None else self.tables[band]

    def shards(self) -> list[VocabShard]:
        return [self.table(i).shard for i in range(len(self.out_bands))]

    def tied_weight_attrs(self) -> list[str]:
        """Paths of the tensors shared with the input layer (DeepSpeed ``tied_weight_attr``)."""
        return self.bands.tied_weight_attrs(self.cfg) if self.bands is not None else []

    def _head(self, h: torch.Tensor):
        """This rank's band-0 logits, the replicated cluster logits and the head's log-normaliser."""
        words = self.table(0).local_logits(h)
        clusters = self.cluster_proj(h) if self.cluster_proj is not None else None
        return words, clusters, log_normalizer(words, self.tp_group, clusters)

    def _tail_hidden(self, tail: int, h: torch.Tensor) -> torch.Tensor:
        """``h -> proj (d -> d_i) -> dropout`` on replicated activations (same mask on every TP rank)."""
        if self.tail_projs is not None:
            z = self.tail_projs[tail](h)
        else:
            z = F.linear(h, self.bands[tail + 1].proj.weight.t())
        return dropout(z, self.cfg.adaptive_softmax_dropout, self.training)

    def _tail(self, tail: int, h: torch.Tensor):
        logits = self.table(tail + 1).local_logits(self._tail_hidden(tail, h))
        return logits, log_normalizer(logits, self.tp_group)

    # ------------------------------------------------------------------ outputs
    def target_log_probs(self, h: torch.Tensor, targets: torch.Tensor, drop_tail_padding: bool = False) -> torch.Tensor:
        """Exact ``log p(target)`` ``[...]`` fp32 for ``h [..., d]``; tails only for their own tokens.

        Head and tails each go through the fused :func:`vocab_parallel_log_prob` (two collectives
        each at TP > 1, the logits buffer reused for softmax and gradient). Tokens are routed to the
        tails by one stable sort of their band; the one host sync is the per-band token count.
        ``drop_tail_padding``: fairseq ``adaptive_loss``'s rule, the tail term of targets whose
        tail-local index is ``padding_idx`` left out (module docstring).
        """
        shape = targets.shape
        h = h.reshape(-1, h.shape[-1])
        t = targets.reshape(-1)
        head = self.table(0)
        words = head.raw_logits(h)
        if self.num_tails == 0:
            return vocab_parallel_log_prob(words, head.target_columns(t), head.shard.real_rows, self.tp_group).view(
                shape
            )
        band = torch.bucketize(t, self.tail_starts, right=True)  # 0 = head word, i + 1 = tail i
        # head target: the word's local column, or the tail's cluster column after this rank's words
        columns = torch.where(band > 0, head.shard.rows_per_rank + band - 1, head.target_columns(t, band == 0))
        lp = vocab_parallel_log_prob(words, columns, head.shard.real_rows, self.tp_group, self.cluster_proj(h))
        order = torch.argsort(band, stable=True)  # ascending token index within each band
        counts = torch.bincount(band, minlength=self.num_tails + 1).tolist()
        tail_lps = []
        for i, idx in enumerate(order.split(counts)[1:]):
            table = self.table(i + 1)
            logits = table.raw_logits(self._tail_hidden(i, h.index_select(0, idx)))
            band_targets = t.index_select(0, idx) - self.out_bands[i + 1].start
            local = table.target_columns(band_targets)
            tail_lp = vocab_parallel_log_prob(logits, local, table.shard.real_rows, self.tp_group)
            if drop_tail_padding:
                tail_lp = torch.where(band_targets == self.cfg.padding_idx, 0.0, tail_lp)
            tail_lps.append(tail_lp)
        return lp.index_add(0, order[counts[0] :], torch.cat(tail_lps)).view(shape)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of -log p(target) over non-pad targets, fp32 scalar; number of those targets)``.

        Under :attr:`criterion` ``nll`` the exact NLL; under ``adaptive_loss`` fairseq's (module docstring).
        """
        keep = targets != self.cfg.padding_idx
        lp = self.target_log_probs(h, targets, drop_tail_padding=self.criterion == "adaptive_loss")
        return -torch.where(keep, lp, 0.0).sum(), keep.sum()

    def _head_log_probs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's band-0 word columns ``[N, rows_per_rank]`` and the clusters' ``[N, k]`` log p (fp32)."""
        words, clusters, lse = self._head(h)
        clusters = clusters.float() if clusters is not None else words.new_zeros(h.shape[0], 0, dtype=torch.float)
        return words.float() - lse.unsqueeze(-1), clusters - lse.unsqueeze(-1)

    def _tail_log_probs(self, tail: int, h: torch.Tensor, cluster_log_probs: torch.Tensor) -> torch.Tensor:
        """This rank's columns ``[N, rows_per_rank]`` of tail ``tail``: ``log p(cluster) + log p(w | cluster)``."""
        logits, tail_lse = self._tail(tail, h)
        return logits.float() - (tail_lse - cluster_log_probs).unsqueeze(-1)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """This rank's shard ``[..., sum(rows_per_rank)]`` of the full log-probability table (fp32).

        Computed band by band; no rank ever holds a whole band.
        """
        lead = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1])
        words, clusters = self._head_log_probs(h)
        parts = [words] + [self._tail_log_probs(i, h, clusters[:, i]) for i in range(self.num_tails)]
        return torch.cat(parts, dim=-1).view(*lead, -1)

    def head_log_probs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoding, step 1: ``(words [N, n_0], clusters [N, k])`` fp32 log p, whole over TP, for ``h [N, d]``.

        The head alone gives the exact log p of every band-0 word and the total mass of each tail
        cluster; a decoder then computes only the tails it needs (:meth:`tail_log_probs`), e.g. none
        for greedy search when the best head word beats every cluster, one for a sample that falls in
        a cluster, all for top-k/top-p over the whole vocabulary. Band 0 is all-gathered (``[N, n_0]``).
        """
        words, clusters = self._head_log_probs(h)
        return gather_band_columns(words, [self.table(0).shard], self.tp_group), clusters

    def tail_log_probs(self, tail: int, h: torch.Tensor, cluster_log_probs: torch.Tensor) -> torch.Tensor:
        """Decoding, step 2: ``[N, n_{tail+1}]`` fp32 exact log p of tail ``tail``'s words, whole over TP.

        ``h [N, d]`` are the rows that need this tail, ``cluster_log_probs [N]`` their column ``tail``
        of :meth:`head_log_probs`. Every TP rank must call it with the same rows (collectives).
        """
        lp = self._tail_log_probs(tail, h, cluster_log_probs)
        return gather_band_columns(lp, [self.table(tail + 1).shard], self.tp_group)

    def gather_log_probs(self, shard: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` from :meth:`log_probs` shards (all-gather; small vocabularies and tests only)."""
        return gather_band_columns(shard, self.shards(), self.tp_group)


def set_criterion(module: nn.Module, criterion: str) -> None:
    """Make every adaptive softmax inside ``module`` (one piece or a pipeline stage) train with ``criterion``."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    for layer in module.modules():
        if isinstance(layer, VocabParallelAdaptiveSoftmax):
            layer.criterion = criterion
