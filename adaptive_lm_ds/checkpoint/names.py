"""The name table: DeepSpeed's file names and pipeline parameter names -> ``AdaptiveLM`` names.

DeepSpeed saves a plain engine's module as ``mp_rank_TT_model_states.pt`` (key ``module``) and a
pipeline engine's as one file per layer, ``layer_LL-model_TT-model_states.pt``, keyed by the layer's
own names. Layer 0 is the embedding, layers 1..L the transformer blocks, L+1 the output (whose
``output.bands.*`` are the tied copies of the embedding's, which layer 0 owns).
"""

from __future__ import annotations


def model_states_file(tp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_model_states.pt"


def layer_states_file(layer: int, tp_rank: int) -> str:
    return f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt"


def pipeline_layer_count(num_layers: int) -> int:
    """Pipeline layers of a model with ``num_layers`` blocks: embedding + blocks + output."""
    return num_layers + 2


def adaptive_lm_name(layer: int, key: str, num_layers: int) -> str | None:
    """The ``AdaptiveLM`` name of ``key`` in pipeline layer ``layer``; None for a tied copy (layer 0 owns it)."""
    if layer == 0:
        return "embed." + key
    if layer <= num_layers:
        return f"layers.{layer - 1}.{key}"
    return None if key.startswith("output.bands.") else key
