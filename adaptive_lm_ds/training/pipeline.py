"""The same model as a DeepSpeed ``PipelineModule``: the parts of ``AdaptiveLM``, not a copy.

Stage layout (``partition_method="type:TransformerBlockPipe"`` balances the blocks; the embedding
joins the first stage and the output the last)::

    EmbeddingPipe        (tokens[, segment_ids], targets) -> (h[, segment_ids], targets)
    TransformerBlockPipe (h[, segment_ids], targets)      -> same shapes      x num_layers
    OutputPipe           (h[, segment_ids], targets)      -> loss_sum (fp32 scalar)

Targets travel with the activations (a small int64 tensor), so the last stage computes the exact
adaptive-softmax loss inside a layer; ``loss_fn`` only applies the update's normaliser, which the
data iterator passes as the label. Segment ids travel too, so every stage's attention is
block-diagonal in packed mode.

**Tied weights.** With tied tables the embedding and the output are ``TiedLayerSpec("bands", ...)``:
each end builds its own ``BandWeights`` and DeepSpeed sums their gradients across the two stages
(``tied_weight_attr`` lists the same tensors in the same order on both). Parameter names map to the
one-piece ``AdaptiveLM`` names through :func:`plain_name`, which export and import use.

**Gradient norm.** DeepSpeed keeps a tied tensor out of the norm on every stage but the owner (the
first) by flagging it ``ds_pipe_replicated``; it flags *every* parameter of the non-owner's tied module,
which here would also drop the output's own tensors (``cluster_proj``, ``final_norm``, untied tail
projections). :class:`AdaptiveLMPipeline` clears the flag on all but the tied tensors, so each tensor
enters the norm exactly once over the TP x PP x DP grid (TP shards once per rank, replicated tensors
on TP rank 0, ZeRO partitions once per DP rank) and clipping sees the single-process norm.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from torch import nn

from adaptive_lm_ds.checkpoint.names import adaptive_lm_name
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.layers.adaptive_input import BandWeights
from adaptive_lm_ds.layers.adaptive_softmax import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.model.lm import LMEmbedding, building_on_meta
from adaptive_lm_ds.model.transformer import TransformerBlock, attention_mask, megatron_config
from adaptive_lm_ds.parallel import LayoutError

TIED_KEY = "bands"


class EmbeddingPipe(LMEmbedding):
    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, *rest, targets = inputs
        segment_ids = rest[0] if rest else None
        return (super().forward(tokens, segment_ids), *rest, targets)


class TransformerBlockPipe(TransformerBlock):
    def __init__(self, cfg: ModelConfig, tp_group, index: int):
        super().__init__(cfg, tp_group, megatron_config(tp_group.size(), meta=building_on_meta()), index=index)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        h, *rest, targets = inputs
        mask = attention_mask(rest[0]) if rest else None
        return (super().forward(h, mask), *rest, targets)


class OutputPipe(nn.Module):
    """Optional final norm + the adaptive softmax; returns the summed loss of the micro batch."""

    def __init__(self, cfg: ModelConfig, tp_group):
        super().__init__()
        self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps) if cfg.final_norm else None
        self.output = VocabParallelAdaptiveSoftmax(cfg, tp_group)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        h, *_, targets = inputs
        if self.final_norm is not None:
            h = self.final_norm(h)
        loss_sum, _ = self.output.loss(h, targets)
        return loss_sum


class AdaptiveLMPipeline(PipelineModule):
    """``PipelineModule`` whose non-owner stage excludes only the truly tied tensors from the grad norm."""

    def _index_tied_modules(self) -> dict:
        comms = super()._index_tied_modules()
        for comm in comms.values():
            tied = {id(self._recursive_getattr(comm["module"], attr)) for attr in comm["weight_attr"]}
            for p in comm["module"].parameters():
                if id(p) not in tied:
                    p.ds_pipe_replicated = False
        return comms


def scaled_loss(loss_sum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``loss_fn``: the micro batch's summed NLL times the update's normaliser (``dp*gas/N``)."""
    return loss_sum * scale.to(loss_sum.dtype)


def layer_specs(cfg: ModelConfig, tp_group) -> list[LayerSpec]:
    if cfg.ties_tables:
        first = TiedLayerSpec(
            TIED_KEY, EmbeddingPipe, cfg, tp_group, tied_weight_attr=BandWeights.tied_weight_attrs(cfg, "tokens.bands")
        )
        last = TiedLayerSpec(
            TIED_KEY, OutputPipe, cfg, tp_group, tied_weight_attr=BandWeights.tied_weight_attrs(cfg, "output.bands")
        )
    else:
        first, last = LayerSpec(EmbeddingPipe, cfg, tp_group), LayerSpec(OutputPipe, cfg, tp_group)
    blocks = [LayerSpec(TransformerBlockPipe, cfg, tp_group, i) for i in range(cfg.num_layers)]
    return [first, *blocks, last]


def build_pipeline_module(
    cfg: ModelConfig, tp_group, topology, checkpoint_activations: bool = False, seed: int = 1
) -> PipelineModule:
    """The pipeline-parallel model for this rank's stage (``topology`` from ``parallel.current()``)."""
    if topology.get_dim("pipe") < 2:
        raise LayoutError("a pipeline needs >= 2 stages; with one stage use AdaptiveLM itself")
    if cfg.num_layers < topology.get_dim("pipe"):
        raise LayoutError(
            f"{cfg.num_layers} transformer blocks cannot fill {topology.get_dim('pipe')} pipeline stages; "
            "lower --pipeline-model-parallel-size"
        )
    return AdaptiveLMPipeline(
        layers=layer_specs(cfg, tp_group),
        topology=topology,
        loss_fn=scaled_loss,
        partition_method="type:TransformerBlockPipe",
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        checkpointable_layers=["TransformerBlockPipe"],
        base_seed=seed,
    )


def plain_name(module: PipelineModule, local_name: str) -> str:
    """The ``AdaptiveLM`` parameter name of a pipeline parameter.

    Local names are ``{layer_idx}.{rest}`` for plain layers and ``tied_modules.bands.{rest}`` for the
    tied ends; layer 0 is the embedding, layers 1..L the blocks, L+1 the output. The last stage's
    tied copies map to the embedding's names (their values are kept equal).
    """
    num_layers = len(module._layer_specs) - 2
    if local_name.startswith(f"tied_modules.{TIED_KEY}."):
        rest = local_name[len(f"tied_modules.{TIED_KEY}.") :]
        if rest.startswith("output.bands."):
            return "embed.tokens." + rest[len("output.") :]
        return rest if rest.startswith(("output.", "final_norm.")) else "embed." + rest
    index, rest = local_name.split(".", 1)
    return adaptive_lm_name(int(index), rest, num_layers)  # the checkpoint's name table: one mapping
