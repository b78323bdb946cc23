"""DeepSpeed's pipeline engine over one stage of ``AdaptiveLM``, under the one-piece parameter names.

The stage is ``AdaptiveLM(cfg, stage=s, num_stages=n)`` (model/lm.py, also evaluation's stage): the
parts stage ``s`` does not own removed. :class:`AdaptiveLMPipeline` registers the stage's parts under
their one-piece names (``embed.*``, ``layers.{i}.*``, ``final_norm.*``, ``output.*``) and hands
DeepSpeed's ``PipelineModule`` one callable per pipeline layer, none of them a module of its own::

    EmbeddingPipe        (tokens[, segment_ids], targets) -> (h[, segment_ids], targets)
    TransformerBlockPipe (h[, segment_ids], targets)      -> same shapes      x num_layers
    OutputPipe           (h[, segment_ids], targets)      -> loss_sum (fp32 scalar)

``partition_method="type:TransformerBlockPipe"`` balances the blocks (DeepSpeed's ``partition_balanced``,
which :func:`pipeline_stage_layers` is; checked on every build). Targets travel with the activations
(a small int64 tensor), so the last stage computes the exact adaptive-softmax loss inside a layer;
``loss_fn`` only applies the update's normaliser, which the data iterator passes as the label. Segment
ids travel too, so every stage's attention is block-diagonal in packed mode.

**Checkpoint files.** DeepSpeed saves each layer's ``state_dict()`` as ``layer_LL-model_TT-model_states.pt``;
a layer's keys come from :mod:`adaptive_lm_ds.checkpoint.names` (the one name table), the same as when
each layer was a module of its own, so checkpoints written before load unchanged. The parameters are
registered in the order DeepSpeed registered them then (the tied end first), so ZeRO's flat optimizer
partitions line up too.

**Tied weights** (docs/model.md, "Tying"). Each end of the pipeline holds its own ``BandWeights``;
DeepSpeed sums their gradients across the two stages (``TiedLayerSpec`` marks the ends; the embedding's
and the output's ``tied_weight_attrs`` list the same tensors in the same order).

**Gradient norm.** DeepSpeed keeps a tied tensor out of the norm on every stage but the owner (the
first) by flagging it ``ds_pipe_replicated``; it flags *every* parameter of the non-owner's tied module,
which here would also drop the output's own tensors (``cluster_proj``, untied tail projections).
The stage base (:func:`deepspeed_compat.stage_pipeline_module`) clears the flag on all but the tied
tensors, so each tensor enters the norm exactly once over the TP x PP x DP grid (TP shards once per rank,
replicated tensors on TP rank 0, ZeRO partitions once per DP rank) and clipping sees the single-process norm.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import PipelineModule, TiedLayerSpec

from adaptive_lm_ds import deepspeed_compat
from adaptive_lm_ds.checkpoint import names
from adaptive_lm_ds.layers.adaptive_input import BandWeights
from adaptive_lm_ds.layers.adaptive_softmax import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.model.lm import AdaptiveLM, LMEmbedding
from adaptive_lm_ds.model.transformer import attention_mask
from adaptive_lm_ds.parallel import LayoutError, ParallelDims

TIED_KEY = "bands"


class _PipeLayer:
    """Pipeline layer ``layer`` of ``stage``: a callable over the pipeline tuple whose ``state_dict`` is
    that layer's share of the stage's, keyed as in DeepSpeed's layer file (:mod:`checkpoint.names`)."""

    def __init__(self, stage: AdaptiveLM, layer: int):
        self.stage, self.layer = stage, layer
        self.__name__ = type(self).__name__  # what DeepSpeed's "type:" partitioning matches

    def _num_layers(self) -> int:
        return self.stage.cfg.num_layers

    def state_dict(self) -> dict[str, torch.Tensor]:
        keyed = (names.pipeline_layer_key(name, self._num_layers()) for name in self.stage.state_dict())
        tensors = self.stage.state_dict()
        return {key: tensors[names.pipeline_name(layer, key, self._num_layers())]
                for layer, key in keyed if layer == self.layer}  # fmt: skip

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        named = {names.pipeline_name(self.layer, key, self._num_layers()): t for key, t in state.items()}
        result = self.stage.load_state_dict(named, strict=False)
        missing = [n for n in result.missing_keys if names.pipeline_layer_key(n, self._num_layers())[0] == self.layer]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"pipeline layer {self.layer}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result


class EmbeddingPipe(_PipeLayer):
    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, *rest, targets = inputs
        segment_ids = rest[0] if rest else None
        return (self.stage.embed(tokens, segment_ids), *rest, targets)


class TransformerBlockPipe(_PipeLayer):
    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        h, *rest, targets = inputs
        mask = attention_mask(rest[0]) if rest else None
        return (self.stage.layers[self.layer - 1](h, mask), *rest, targets)


class OutputPipe(_PipeLayer):
    """Optional final norm + the adaptive softmax; returns the summed loss of the micro batch."""

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        h, *_, targets = inputs
        if self.stage.final_norm is not None:
            h = self.stage.final_norm(h)
        loss_sum, _ = self.stage.output.loss(h, targets)
        return loss_sum


class AdaptiveLMPipeline(deepspeed_compat.stage_pipeline_module()):
    """``PipelineModule`` over one stage of ``AdaptiveLM`` (see the module docstring; DeepSpeed's side of
    building it is :func:`deepspeed_compat.stage_pipeline_module`)."""

    def stage_children(self, layers: list) -> list[tuple[str, torch.nn.Module]]:
        """The stage's parts by name, in registration order; checks DeepSpeed's split against the model's."""
        stage = layers[0].stage
        blocks = [layer.layer - 1 for layer in layers if isinstance(layer, TransformerBlockPipe)]
        if blocks != stage.layers.indices:
            raise LayoutError(
                f"DeepSpeed gave this pipeline stage blocks {blocks}, the model's split says "
                f"{stage.layers.indices}; the two partitioners disagree"
            )
        return stage_parts(stage, tied=TIED_KEY in self.tied_modules)

    def tied_module(self, layer: _PipeLayer) -> torch.nn.Module:
        """The stage part holding the tied tables: the embedding at the first end, the output at the last."""
        return layer.stage.embed if layer.layer == 0 else layer.stage.output


def stage_parts(stage: AdaptiveLM, tied: bool) -> list[tuple[str, torch.nn.Module]]:
    """A pipeline stage's parts by name in the order DeepSpeed registers them, hence the order of the stage's
    parameters (a ZeRO-0 pipeline checkpoint's optimizer state is by that index): the one-piece order (embed,
    layers, final_norm, output), but a tied last stage's end first."""
    children = dict(stage.named_children())
    order = list(children)
    if tied and stage.output is not None:
        order = [n for n in ("final_norm", "output") if n in children] + ["layers"]
    return [(name, children[name]) for name in order]


def scaled_loss(loss_sum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``loss_fn``: the micro batch's summed NLL times the update's normaliser (``dp*gas/N``)."""
    return loss_sum * scale.to(loss_sum.dtype)


def pipeline_layers(stage: AdaptiveLM) -> list:
    """DeepSpeed's layer list for ``stage``: every pipeline layer (DeepSpeed runs only the stage's own).
    With tied tables the two ends are wrapped in ``TiedLayerSpec`` (never built: the layer rides along as
    its argument), which is how DeepSpeed finds the stages that share the tensors."""
    cfg = stage.cfg
    layers = [EmbeddingPipe(stage, 0), *(TransformerBlockPipe(stage, i + 1) for i in range(cfg.num_layers))]
    layers.append(OutputPipe(stage, cfg.num_layers + 1))
    if cfg.ties_tables:
        first, last = layers[0], layers[-1]
        layers[0] = TiedLayerSpec(
            TIED_KEY, LMEmbedding, first, tied_weight_attr=BandWeights.tied_weight_attrs(cfg, "tokens.bands")
        )
        layers[-1] = TiedLayerSpec(
            TIED_KEY, VocabParallelAdaptiveSoftmax, last, tied_weight_attr=BandWeights.tied_weight_attrs(cfg, "bands")
        )
    return layers


def build_pipeline_module(
    cfg, dims: ParallelDims, checkpoint_activations: bool = False, seed: int = 1
) -> PipelineModule:
    """The pipeline-parallel model for this rank's stage (``dims`` from :func:`parallel.current`)."""
    deepspeed_compat.check_supported()
    if dims.pp < 2:
        raise LayoutError("a pipeline needs >= 2 stages; with one stage use AdaptiveLM itself")
    if cfg.num_layers < dims.pp:
        raise LayoutError(
            f"{cfg.num_layers} transformer blocks cannot fill {dims.pp} pipeline stages; "
            "lower --pipeline-model-parallel-size"
        )
    stage = AdaptiveLM(cfg, dims.tp_group, stage=dims.pp_rank, num_stages=dims.pp)
    return AdaptiveLMPipeline(
        layers=pipeline_layers(stage),
        topology=dims.topology,
        loss_fn=scaled_loss,
        partition_method="type:TransformerBlockPipe",
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        checkpointable_layers=["TransformerBlockPipe"],
        base_seed=seed,
    )
