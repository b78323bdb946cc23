"""The adaptive-input transformer LM and its parts."""

from adaptive_lm_ds.model.lm import AdaptiveLM, LMEmbedding, pipeline_stage_layers
from adaptive_lm_ds.model.positions import LearnedPositions, SinusoidalPositions, make_positions
from adaptive_lm_ds.model.transformer import KVCache, TransformerBlock, attention_mask

__all__ = [
    "AdaptiveLM",
    "KVCache",
    "LMEmbedding",
    "LearnedPositions",
    "SinusoidalPositions",
    "TransformerBlock",
    "attention_mask",
    "make_positions",
    "pipeline_stage_layers",
]
