"""Inference like fairseq's hub: score raw text and generate (greedy, sampled or beam search), KV-cached, at any TP."""

from adaptive_lm_ds.inference.generator import Hypothesis, generate
from adaptive_lm_ds.inference.hub import LanguageModel
from adaptive_lm_ds.inference.search import GenerationConfig, GenerationError

__all__ = ["GenerationConfig", "GenerationError", "Hypothesis", "LanguageModel", "generate"]
