"""adaptive_lm_ds.flops against independent counts: FlopCounterMode on a real tiny model, direct sums."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.flops import (
    band_fractions,
    fit_zipf_exponent,
    flops_per_token,
    packed_attention_context,
    zipf_band_fractions,
)
from adaptive_lm_ds.model import AdaptiveLM
from adaptive_lm_ds.model.transformer import attention_mask

VOCAB, BATCH, LENGTH = 2000, 2, 48


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture
def tiny_model():
    with parallel.single_process():
        yield AdaptiveLM(tiny(VOCAB))


def _skewed_ids(generator: torch.Generator) -> torch.Tensor:
    """Ids with every band present and unequal shares (mostly head words)."""
    ids = torch.randint(4, 200, (BATCH, LENGTH), generator=generator)
    ids[:, ::3] = torch.randint(200, 800, (BATCH, LENGTH // 3), generator=generator)
    ids[:, ::7] = torch.randint(800, VOCAB, ids[:, ::7].shape, generator=generator)
    return ids


def test_blocks_match_flop_counter(tiny_model):
    """The blocks' linears; the CPU SDPA kernel is not in FlopCounterMode's registry (counted below)."""
    x = torch.randn(BATCH, LENGTH, tiny_model.cfg.embed_dim)
    measured = _counted(lambda: [layer(x) for layer in tiny_model.layers])
    expected = flops_per_token(tiny_model.cfg, attention_context=LENGTH)
    assert measured == pytest.approx(expected.blocks * BATCH * LENGTH, rel=1e-9)


def test_dense_attention_matches_flop_counter_on_explicit_matmuls(tiny_model):
    cfg = tiny_model.cfg
    q, k, v = (torch.randn(BATCH, cfg.num_heads, LENGTH, cfg.head_dim) for _ in range(3))
    measured = cfg.num_layers * _counted(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    expected = flops_per_token(cfg, attention_context=LENGTH).attention
    assert measured == pytest.approx(expected * BATCH * LENGTH, rel=1e-9)


def test_output_counts_head_always_and_tails_by_target_share(tiny_model):
    targets = _skewed_ids(torch.Generator().manual_seed(0))
    h = torch.randn(BATCH, LENGTH, tiny_model.cfg.embed_dim)
    measured = _counted(lambda: tiny_model.output.loss(h, targets))
    shares = band_fractions(tiny_model.cfg.output_bands(), torch.bincount(targets.flatten(), minlength=VOCAB))
    expected = flops_per_token(tiny_model.cfg, LENGTH, target_fractions=shares).output
    assert measured == pytest.approx(expected * BATCH * LENGTH, rel=1e-9)


def test_input_projection_counts_each_band_for_its_own_ids(tiny_model):
    """Against a fairseq-style input that projects only the rows of each band (its real work)."""
    cfg = tiny_model.cfg
    ids = _skewed_ids(torch.Generator().manual_seed(1)).flatten()

    def per_band_projection():
        for weight in tiny_model.embed.bands:
            rows = ids[(ids >= weight.band.start) & (ids < weight.band.end)] - weight.band.start
            F.linear(F.embedding(rows, weight.table.weight), weight.proj.weight)

    shares = band_fractions(cfg.input_bands(), torch.bincount(ids, minlength=VOCAB))
    expected = flops_per_token(cfg, LENGTH, input_fractions=shares).input_proj
    assert _counted(per_band_projection) == pytest.approx(expected * ids.numel(), rel=1e-9)


def test_training_is_three_forwards_but_two_for_input_projections(tiny_model):
    parts = flops_per_token(tiny_model.cfg, LENGTH)
    assert parts.training == pytest.approx(3 * parts.forward - parts.input_proj)


def test_full_softmax_costs_2dV():
    cfg = tiny(VOCAB).replace(
        adaptive_softmax=False, adaptive_input=False, tie_adaptive_weights=False, tie_adaptive_proj=False
    )
    parts = flops_per_token(cfg, LENGTH)
    assert parts.output == 2 * cfg.embed_dim * VOCAB and parts.input_proj == 0


def test_zipf_band_fractions_match_a_direct_sum():
    bands = tiny(VOCAB).output_bands()
    weights = {word_id: (word_id - 3) ** -1.2 for word_id in range(4, VOCAB)}
    total = sum(weights.values())
    direct = [sum(w for i, w in weights.items() if b.start <= i < b.end) / total for b in bands]
    assert zipf_band_fractions(bands, 1.2) == pytest.approx(direct, rel=1e-9)


def test_fit_zipf_exponent_recovers_the_generating_exponent():
    counts = [1e7 * r**-1.3 for r in range(1, 5001)]
    assert fit_zipf_exponent(counts) == pytest.approx(1.3, rel=1e-6)


def test_packed_attention_context_is_the_mean_number_of_attended_keys():
    lengths = [5, 11, 1, 31]
    segment_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).unsqueeze(0)
    mask = attention_mask(segment_ids)
    assert packed_attention_context(lengths) == pytest.approx(mask.sum().item() / sum(lengths))
    assert packed_attention_context([LENGTH]) == pytest.approx((LENGTH + 1) / 2)


def test_mismatched_fractions_are_rejected():
    with pytest.raises(ValueError, match="fractions has 2 entries but the model has 3 bands"):
        flops_per_token(tiny(VOCAB), LENGTH, target_fractions=[0.5, 0.5])
    assert math.isfinite(flops_per_token(tiny(VOCAB), LENGTH).training)
