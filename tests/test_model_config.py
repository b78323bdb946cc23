"""Presets, bad configurations, and parameter counts of the paper's models (meta device)."""

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ConfigError, ModelConfig, get_preset, tiny
from adaptive_lm_ds.model import AdaptiveLM


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    with parallel.single_process(seed=0):
        yield


def _expected_params(cfg: ModelConfig) -> int:
    """Parameters from the paper's formulas: tables + projections + blocks + softmax extras."""
    edges = [0, *cfg.adaptive_input_cutoffs, cfg.vocab_size]
    dims = [int(cfg.embed_dim // cfg.adaptive_input_factor**i) for i in range(len(edges) - 1)]
    tables = sum((b - a) * dim for a, b, dim in zip(edges, edges[1:], dims))
    input_projs = sum(dim * cfg.embed_dim for dim in dims)
    d, f = cfg.embed_dim, cfg.ffn_dim
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * (2 * d)
    clusters = (len(dims) - 1) * d
    tail_projs = 0 if cfg.tie_adaptive_proj else sum(d * dim for dim in dims[1:])
    return tables + input_projs + cfg.num_layers * block + clusters + tail_projs


def _meta_params(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        model = AdaptiveLM(cfg)
    assert all(p.is_meta for p in model.parameters())
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def test_wiki103_has_247m_parameters():
    cfg = get_preset("wiki103")
    assert cfg.vocab_size == 267_744
    count = _meta_params(cfg)
    assert count == _expected_params(cfg)
    assert round(count / 1e6) == 247


def test_gbw_huge_has_1026m_parameters():
    cfg = get_preset("gbw_huge")
    assert cfg.vocab_size == 793_475
    count = _meta_params(cfg)
    assert count == _expected_params(cfg)
    assert abs(count / 1026e6 - 1) <= 0.01


def test_tiny_works_for_small_vocabularies():
    for vocab in (100, 1000, 24_000):
        cfg = get_preset("tiny", vocab_size=vocab).validate(tp_size=4)
        assert cfg.input_bands()[-1].end == vocab
        model = AdaptiveLM(cfg)
        loss, ntokens = model(torch.randint(0, vocab, (1, 8)), torch.randint(2, vocab, (1, 8)))
        assert torch.isfinite(loss) and int(ntokens) == 8


BAD = [
    (dict(cutoffs=(50, 40)), "strictly increasing"),
    (dict(cutoffs=(40, 150)), "below vocab_size"),
    (dict(cutoffs=(20, 40, 60, 80)), "dimension"),  # 64 // 4**3 = 1, 64 // 4**4 = 0
    (dict(adaptive_input_factor=1.0, adaptive_softmax_factor=1.0), "factor"),
    (dict(num_heads=3), "num_heads"),
    (dict(adaptive_softmax_cutoffs=(10, 30)), "identical"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_configuration_fails_at_construction(overrides, message):
    with pytest.raises(ConfigError, match=message):
        AdaptiveLM(tiny(100, **overrides))


@pytest.mark.parametrize("field,value", [("num_heads", 6), ("ffn_dim", 130)])
def test_sizes_not_divisible_by_tp_fail_with_the_tp_size_named(field, value):
    cfg = tiny(100, **{field: value, "embed_dim": 72})
    with pytest.raises(ConfigError, match=rf"{field}=.*tensor-parallel size 4"):
        AdaptiveLM(cfg, tp_group=parallel.ShapeOnlyGroup(4))


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="unknown preset 'gbw_giant'"):
        get_preset("gbw_giant")
