"""The adaptive-input language model, whole or as one pipeline stage.

``AdaptiveLM`` = :class:`LMEmbedding` -> ``layers`` (:class:`TransformerBlock`) -> optional final norm ->
:class:`VocabParallelAdaptiveSoftmax`. ``AdaptiveLM(cfg, stage=s, num_stages=n)`` is pipeline stage ``s``
of it: the same model with the parts that stage does not own removed (torchtitan's ``_split_module``),
so every parameter keeps its one-piece name (``layers.{i}`` keeps its model-wide index ``i``). Training's
DeepSpeed pipeline (training/pipeline.py) and evaluation's stage (model/pipeline_stage.py) are both built
from it; :func:`pipeline_stage_layers` is the one split of the blocks over stages (DeepSpeed's
``partition_balanced``). Tying, in one piece and across stages: docs/model.md ("Tying").
"""

from __future__ import annotations

import torch
from deepspeed.runtime.utils import partition_balanced
from torch import nn

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ConfigError, ModelConfig
from adaptive_lm_ds.layers.adaptive_input import BandWeights, VocabParallelAdaptiveInput
from adaptive_lm_ds.layers.adaptive_softmax import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.layers.dropout import dropout
from adaptive_lm_ds.model.positions import LearnedPositions, SinusoidalPositions, make_positions
from adaptive_lm_ds.model.transformer import KVCache, TransformerBlock, attention_mask, megatron_config


def building_on_meta() -> bool:
    """True inside ``with torch.device("meta")``: shapes only, no initialisation."""
    return torch.empty(0).is_meta


class LMEmbedding(nn.Module):
    """``tokens [B, T]`` -> ``sqrt(d) * embed(tokens) + positions``, then dropout: ``[B, T, d]``."""

    def __init__(self, cfg: ModelConfig, tp_group, bands: BandWeights | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokens = VocabParallelAdaptiveInput(cfg, tp_group, bands)
        if cfg.learned_pos:
            self.positions = LearnedPositions(cfg.max_positions, cfg.embed_dim, cfg.padding_idx)
        else:
            self.positions = SinusoidalPositions(cfg.embed_dim, cfg.padding_idx)

    @property
    def bands(self) -> BandWeights:
        return self.tokens.bands

    def tied_weight_attrs(self) -> list[str]:
        """Paths of the tensors shared with the output layer (DeepSpeed ``tied_weight_attr``)."""
        return self.bands.tied_weight_attrs(self.cfg, prefix="tokens.bands")

    def forward(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """``offset``: tokens already decoded before these (positions continue from there)."""
        if self.cfg.learned_pos and offset + tokens.shape[1] > self.cfg.max_positions:
            raise ValueError(
                f"sequence length {offset + tokens.shape[1]} exceeds max_positions={self.cfg.max_positions} "
                "of the learned positional embedding; use shorter blocks"
            )
        x = self.cfg.embed_scale * self.tokens(tokens)
        x = x + self.positions(make_positions(tokens, self.cfg.padding_idx, segment_ids, offset)).to(x.dtype)
        return dropout(x, self.cfg.dropout, self.training)


class Blocks(nn.Module):
    """Transformer blocks under their model-wide indices (names ``layers.{i}.*``), iterated in order.

    The whole model holds all of them; a pipeline stage holds its contiguous share, still indexed
    model-wide, so a stage's parameter names are the whole model's.
    """

    def __init__(self, blocks: dict[int, TransformerBlock]):
        super().__init__()
        for index, block in blocks.items():
            self.add_module(str(index), block)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> TransformerBlock:
        return self._modules[str(index)]

    @property
    def indices(self) -> list[int]:
        return [int(k) for k in self._modules]


class AdaptiveLM(nn.Module):
    """Decoder-only LM. ``tp_group`` defaults to megatron-core's (needs :func:`parallel.initialize_parallel`).

    ``stage`` of ``num_stages``: only that pipeline stage's parts (see the module docstring); the first
    stage has ``embed``, the last ``final_norm`` and ``output``, the others neither (``None``).
    Shapes: ``tokens, targets, segment_ids`` ``[B, T]`` int64; hidden states ``[B, T, d]``.
    """

    def __init__(self, cfg: ModelConfig, tp_group=None, stage: int = 0, num_stages: int = 1):
        super().__init__()
        self.tp_group = tp_group if tp_group is not None else parallel.tensor_parallel_group()
        self.cfg = cfg.validate(self.tp_group.size())
        first, last = stage == 0, stage == num_stages - 1
        mp_config = megatron_config(self.tp_group.size(), meta=building_on_meta())
        self.embed = LMEmbedding(cfg, self.tp_group) if first else None
        blocks = pipeline_stage_layers(cfg.num_layers, num_stages)[stage]
        self.layers = Blocks({i: TransformerBlock(cfg, self.tp_group, mp_config, index=i) for i in blocks})
        self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps) if last and cfg.final_norm else None
        shared = self.embed.bands if cfg.ties_tables and first else None  # a last stage builds its own copy
        self.output = VocabParallelAdaptiveSoftmax(cfg, self.tp_group, shared) if last else None

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache per layer, for :meth:`hidden_states` ``cache=`` (incremental decoding)."""
        return [KVCache() for _ in self.layers]

    def hidden_states(
        self,
        tokens: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """``[B, T, d]``. With ``cache`` (:meth:`new_cache`) ``tokens`` continue the cached positions (no
        pads, no segments) and are added to the cache: each new token costs one position."""
        mask = attention_mask(segment_ids)
        offset = cache[0].length if cache else 0
        x = self.embed(tokens, segment_ids, offset)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache[i] if cache else None)
        return self.final_norm(x) if self.final_norm is not None else x

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ):
        """With ``targets``: ``(loss_sum fp32, ntokens)`` over non-pad targets; else hidden states."""
        h = self.hidden_states(tokens, segment_ids)
        return h if targets is None else self.output.loss(h, targets)

    def log_probs(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """This TP rank's shard ``[B, T, sum(rows_per_rank)]`` of log p (layout: adaptive_softmax.py)."""
        return self.output.log_probs(self.hidden_states(tokens, segment_ids))

    def gather_log_probs(self, shard: torch.Tensor) -> torch.Tensor:
        """``[B, T, V]`` full table from :meth:`log_probs` shards (materialises V: tests/small models)."""
        return self.output.gather_log_probs(shard)

    def target_log_probs(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        softmax_batch: int | None = None,
    ) -> torch.Tensor:
        """``[B, T]`` fp32 exact ``log p(target)`` without gathering any table (see :func:`output_log_probs`)."""
        return output_log_probs(self.output, self.hidden_states(tokens, segment_ids), targets, softmax_batch)


def output_log_probs(
    output: VocabParallelAdaptiveSoftmax, h: torch.Tensor, targets: torch.Tensor, softmax_batch: int | None = None
) -> torch.Tensor:
    """``log p(targets)`` ``[B, T]`` from hidden states ``[B, T, d]``; with ``softmax_batch`` S and
    ``B x T >= S``, the output layer runs over S positions at a time (fairseq's ``--softmax-batch``: its
    logits then never exceed S rows, whatever the batch)."""
    if not softmax_batch or targets.numel() < softmax_batch:
        return output.target_log_probs(h, targets)
    flat_h, flat_t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    parts = [
        output.target_log_probs(flat_h[s : s + softmax_batch], flat_t[s : s + softmax_batch])
        for s in range(0, flat_t.numel(), softmax_batch)
    ]
    return torch.cat(parts).view(targets.shape)


def pipeline_stage_layers(num_layers: int, pp: int) -> list[range]:
    """The blocks of each pipeline stage: DeepSpeed's ``partition_balanced`` over the pipeline's layers
    (embedding, ``num_layers`` blocks, output) weighted ``0, 1 x num_layers, 0``, as training's
    ``partition_method="type:TransformerBlockPipe"`` weighs them; the embedding joins the first stage
    and the output the last. Contiguous and balanced; earlier stages take the remainder."""
    if pp < 1 or num_layers < pp:
        raise ConfigError(f"cannot split {num_layers} layers over {pp} pipeline stages; use pp <= num_layers")
    parts = partition_balanced([0] + [1] * num_layers + [0], pp)
    return [range(max(a, 1) - 1, min(b, num_layers + 1) - 1) for a, b in zip(parts, parts[1:])]
