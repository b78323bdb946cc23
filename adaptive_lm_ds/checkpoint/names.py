"""DeepSpeed's file names, and where a one-piece ``AdaptiveLM`` parameter lives in a pipeline's files.

DeepSpeed saves a one-stage engine's module as ``mp_rank_TT_model_states.pt`` (key ``module``, one-piece
names) and a pipeline engine's as one file per layer, ``layer_LL-model_TT-model_states.pt``, keyed by
the name inside that layer. Layer 0 is the embedding (``embed.*``), layers 1..L the transformer blocks
(``layers.{i}.*`` in layer ``i + 1``), L+1 the final norm and the output, under their own names (some of
whose ``output.bands.*`` are the last stage's copies of the tied tensors, which layer 0 owns). This module is
the one place that says so: training's pipeline writes and reads its layer files through
:func:`pipeline_layer_key` / :func:`pipeline_name`, the offline export reads them through
:func:`adaptive_lm_name`.
"""

from __future__ import annotations

from collections.abc import Collection


def model_states_file(tp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_model_states.pt"


def layer_states_file(layer: int, tp_rank: int) -> str:
    return f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt"


def pipeline_layer_count(num_layers: int) -> int:
    """Pipeline layers of a model with ``num_layers`` blocks: embedding + blocks + output."""
    return num_layers + 2


def pipeline_layer_key(name: str, num_layers: int) -> tuple[int, str]:
    """``(layer, key)``: the pipeline layer file holding one-piece parameter ``name``, and its key there."""
    if name.startswith("embed."):
        return 0, name[len("embed.") :]
    if name.startswith("layers."):
        index, key = name[len("layers.") :].split(".", 1)
        return int(index) + 1, key
    return num_layers + 1, name


def pipeline_name(layer: int, key: str, num_layers: int) -> str:
    """The one-piece name of ``key`` in pipeline layer ``layer`` (the inverse of :func:`pipeline_layer_key`)."""
    if layer == 0:
        return "embed." + key
    if layer <= num_layers:
        return f"layers.{layer - 1}.{key}"
    return key


def adaptive_lm_name(layer: int, key: str, num_layers: int, tied_copies: Collection[str]) -> str | None:
    """:func:`pipeline_name`, but None for the last layer's copies of tied tensors (layer 0 owns those).

    ``tied_copies``: the output layer's one-piece names of the tensors it shares with the input layer, the
    model's own list (:func:`~adaptive_lm_ds.model.sharding.tied_names`): the tables with
    ``--tie-adaptive-weights``, the tail projections too only with ``--tie-adaptive-proj``. An untied
    projection lives in the last layer alone."""
    name = pipeline_name(layer, key, num_layers)
    return None if layer == num_layers + 1 and name in tied_copies else name
