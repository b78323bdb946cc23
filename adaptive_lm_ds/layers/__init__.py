"""Vocabulary-parallel layers: adaptive input, adaptive softmax and their shared maths."""

from adaptive_lm_ds.layers.adaptive_input import BandWeight, BandWeights, VocabParallelAdaptiveInput
from adaptive_lm_ds.layers.adaptive_softmax import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.layers.cross_entropy import vocab_parallel_log_prob
from adaptive_lm_ds.layers.vocab_parallel import VocabParallelTable, VocabShard, log_normalizer

__all__ = [
    "BandWeight",
    "BandWeights",
    "VocabParallelAdaptiveInput",
    "VocabParallelAdaptiveSoftmax",
    "VocabParallelTable",
    "VocabShard",
    "log_normalizer",
    "vocab_parallel_log_prob",
]
