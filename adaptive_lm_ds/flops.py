"""Model FLOPs per token, counting the adaptive layers' *real*, frequency-weighted work (for MFU).

An adaptive softmax scores the head (band-0 words + one logit per tail cluster) for every token, but
tail ``i`` only for the tokens whose target lies in band ``i + 1``; an adaptive input projects band
``i``'s ``d_i``-wide vectors only for the tokens whose id lies in band ``i``. So the cost per token is
the head plus each tail weighted by its band's share of the tokens. The shares come from unigram
frequencies (:func:`band_fractions`) or from a Zipf law (:func:`zipf_band_fractions`, ids ranked by
frequency as fairseq's dictionary orders them).

Conventions (those of ``torch.utils.flop_counter.FlopCounterMode``): a multiply-add is 2 FLOPs;
only matrix products count (norms, softmax, activations are ignored); attention counts
``2 * 2 * context * d`` per token (``QK^T`` and ``PV``), where ``context`` is the number of keys a query
sees: ``T`` for a dense count, ``(T + 1) / 2`` for causal, the per-sentence mean for block-diagonal
packing (:func:`packed_attention_context`). Training = forward + backward = 3 x forward, except the
input projections, whose input (a looked-up table row) needs no gradient: 2 x forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adaptive_lm_ds.config import Band, ModelConfig

DEFAULT_ZIPF_EXPONENT = 1.0  # the textbook value for English word frequencies; used when no counts exist
NUM_SPECIALS = 4  # fairseq's <s>, <pad>, </s>, <unk>: ids 0..3 come before the words ranked by count

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's data sheets (SXM parts).
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs per token by part; :attr:`training` is forward + backward."""

    input_proj: float
    blocks: float  # the transformer blocks' linears
    attention: float  # QK^T and PV
    output: float  # head + frequency-weighted tails (or the full softmax)

    @property
    def forward(self) -> float:
        return self.input_proj + self.blocks + self.attention + self.output

    @property
    def training(self) -> float:
        return 2 * self.input_proj + 3 * (self.blocks + self.attention + self.output)


def zipf_band_fractions(bands: Sequence[Band], exponent: float = DEFAULT_ZIPF_EXPONENT) -> list[float]:
    """Share of tokens in each band when word ``r`` (1-based rank, id ``r + 3``) has ``p ~ r**-exponent``."""
    vocab = bands[-1].end
    ranks = np.arange(1, vocab - NUM_SPECIALS + 1, dtype=np.float64)
    probs = np.zeros(vocab)
    probs[NUM_SPECIALS:] = ranks**-exponent
    return band_fractions(bands, probs)


def band_fractions(bands: Sequence[Band], counts: Sequence[float] | np.ndarray) -> list[float]:
    """Share of tokens in each band from per-id counts (or probabilities) ``[V]``."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("band_fractions needs at least one positive count")
    return [float(counts[b.start : b.end].sum() / total) for b in bands]


def fit_zipf_exponent(counts: Sequence[int] | np.ndarray, max_rank: int = 10_000) -> float:
    """Least-squares slope of ``log count`` against ``log rank`` over the ``max_rank`` most frequent types."""
    ranked = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    ranked = ranked[ranked > 0][:max_rank]
    if ranked.size < 10:
        raise ValueError(f"need counts for at least 10 types to fit a Zipf exponent, got {ranked.size}")
    slope = np.polyfit(np.log(np.arange(1, ranked.size + 1)), np.log(ranked), 1)[0]
    return float(-slope)


def packed_attention_context(sentence_lengths: Sequence[int]) -> float:
    """Mean keys per query under causal, block-diagonal attention over packed sentences."""
    lengths = np.asarray(sentence_lengths, dtype=np.float64)
    return float((lengths * (lengths + 1) / 2).sum() / lengths.sum())


def flops_per_token(
    cfg: ModelConfig,
    attention_context: float,
    input_fractions: Sequence[float] | None = None,
    target_fractions: Sequence[float] | None = None,
) -> FlopsBreakdown:
    """Forward FLOPs per token of ``cfg``; fractions are each band's share of input ids / targets.

    ``None`` fractions mean a Zipf estimate with :data:`DEFAULT_ZIPF_EXPONENT`. A full embedding costs
    no FLOPs (a lookup); a full softmax costs ``2 d V``.
    """
    d = cfg.embed_dim
    in_bands, out_bands = cfg.input_bands(), cfg.output_bands()
    input_fractions = input_fractions if input_fractions is not None else zipf_band_fractions(in_bands)
    target_fractions = target_fractions if target_fractions is not None else zipf_band_fractions(out_bands)
    _check_fractions("input", in_bands, input_fractions)
    _check_fractions("target", out_bands, target_fractions)
    input_proj = 0.0
    if cfg.adaptive_input:
        input_proj = sum(f * 2 * b.dim * d for b, f in zip(in_bands, input_fractions))
    blocks = cfg.num_layers * (4 * 2 * d * d + 2 * 2 * d * cfg.ffn_dim)
    attention = cfg.num_layers * 2 * 2 * attention_context * d
    head, tails = out_bands[0], out_bands[1:]
    output = 2 * d * (head.size + len(tails))
    output += sum(f * (2 * d * b.dim + 2 * b.dim * b.size) for b, f in zip(tails, target_fractions[1:]))
    return FlopsBreakdown(input_proj=input_proj, blocks=blocks, attention=attention, output=output)


def _check_fractions(what: str, bands: Sequence[Band], fractions: Sequence[float]) -> None:
    if len(fractions) != len(bands):
        raise ValueError(f"{what} fractions has {len(fractions)} entries but the model has {len(bands)} bands")


def mfu(tokens_per_second: float, training_flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware's dense peak."""
    return tokens_per_second * training_flops_per_token / peak_flops


def peak_bf16_flops(device_name: str) -> float:
    """Dense bf16 peak of a GPU named like ``torch.cuda.get_device_name()`` (e.g. 'NVIDIA H100 80GB HBM3')."""
    for key, peak in BF16_PEAK_FLOPS.items():
        if key in device_name.upper():
            return peak
    raise ValueError(f"no bf16 peak known for GPU {device_name!r}; pass --peak-tflops explicitly")


def run_flops_per_token(cfg: ModelConfig, dictionary, data) -> FlopsBreakdown:
    """Forward FLOPs per token of a run by part, the adaptive bands weighted by ``dictionary``'s real word
    frequencies (``counts``), attention by ``data``'s blocks (an LM dataset: packed or fixed-length)."""
    counts = np.asarray(dictionary.counts, dtype=np.float64)
    in_fractions = band_fractions(cfg.input_bands(), counts)
    out_fractions = band_fractions(cfg.output_bands(), counts)
    if data.break_mode == "packed":
        context = packed_attention_context(np.asarray(data.data.sizes[:100_000]))
    else:
        context = (data.tokens_per_sample + 1) / 2
    return flops_per_token(cfg, context, in_fractions, out_fractions)


def training_flops_per_token(cfg: ModelConfig, dictionary, data) -> float:
    """Model FLOPs (forward + backward) per trained token of a run (:func:`run_flops_per_token`)."""
    return run_flops_per_token(cfg, dictionary, data).training


def peak_flops(peak_tflops: float) -> float:
    """The device's dense peak FLOP/s for MFU: the flag, else a known GPU's bf16 peak, else 0 (no MFU)."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    import torch

    if torch.cuda.is_available():
        try:
            return peak_bf16_flops(torch.cuda.get_device_name())
        except ValueError:
            return 0.0
    return 0.0
