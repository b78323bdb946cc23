"""Every parameter starts with the spread fairseq's initialisation gives it (reference: fairseq's formulas).

fairseq ``transformer_lm`` init, per tensor (``fan_in``, ``fan_out`` of a ``[out, in]`` weight):

* adaptive input tables N(0, d_i**-0.5); input projections and adaptive-softmax projections
  xavier-uniform, std sqrt(2 / (fan_in + fan_out));
* attention q/k/v weights xavier with gain 1/sqrt(2); ``out_proj`` xavier, bias 0;
* q/k/v biases and the whole FFN keep ``nn.Linear``'s default, U(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in);
* layer norms weight 1, bias 0.

A sample std of ``n`` iid values has relative standard deviation about ``0.71 / sqrt(n)`` (normal;
``0.45 / sqrt(n)`` uniform), so ``RTOL_PER_SQRT_N / sqrt(n)`` is a 7-sigma bound.
"""

import math
import re

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import gbw_huge, wiki103
from adaptive_lm_ds.model import AdaptiveLM

VOCAB = 4000
SMALL = dict(embed_dim=256, ffn_dim=1024, num_layers=1, num_heads=4, max_positions=64,
             adaptive_input_cutoffs=(400, 1600), adaptive_softmax_cutoffs=(400, 1600))  # fmt: skip
RTOL_PER_SQRT_N = 5.0


def xavier(shape, gain=1.0):
    return gain * math.sqrt(2.0 / (shape[0] + shape[1]))


def linear_default(shape):
    return 1.0 / math.sqrt(3 * shape[-1])


# (name pattern, expected std from the [out, in] shape of the weight; for biases of the layer's weight)
EXPECTED = [
    (r"embed\.tokens\.bands\.\d+\.table\.weight", lambda w, _: w.shape[1] ** -0.5),
    (r"embed\.tokens\.bands\.\d+\.proj\.weight", lambda w, _: xavier(w.shape)),
    (r"output\.(cluster_proj|tail_projs\.\d+)\.weight", lambda w, _: xavier(w.shape)),
    (r"layers\.\d+\.self_attn\.[qkv]_proj\.weight", lambda w, _: xavier(w.shape, 1 / math.sqrt(2))),
    (r"layers\.\d+\.self_attn\.[qkv]_proj\.bias", lambda _, weight: linear_default(weight.shape)),
    (r"layers\.\d+\.self_attn\.out_proj\.weight", lambda w, _: xavier(w.shape)),
    (r"layers\.\d+\.ffn\.fc[12]\.weight", lambda w, _: linear_default(w.shape)),
    (r"layers\.\d+\.ffn\.fc[12]\.bias", lambda _, weight: linear_default(weight.shape)),
]


def _model(preset):
    with parallel.single_process(seed=3):
        return AdaptiveLM(preset(VOCAB, **SMALL))


@pytest.mark.parametrize("preset", [wiki103, gbw_huge], ids=["wiki103", "gbw_huge"])
def test_each_tensor_has_fairseqs_init_std(preset):
    model = _model(preset)
    params = dict(model.named_parameters())
    checked = set()
    for name, p in params.items():
        for pattern, expected in EXPECTED:
            if re.fullmatch(pattern, name):
                weight = params.get(name.removesuffix(".bias") + ".weight")
                values = p.detach().flatten()
                if name.endswith("table.weight"):  # the padding row is zero in every band (fairseq's too)
                    values = torch.cat([p.detach()[:1], p.detach()[2:]]).flatten()
                want = expected(p, weight)
                rtol = RTOL_PER_SQRT_N / math.sqrt(values.numel())
                assert abs(values.std().item() / want - 1) < rtol, f"{name}: std {values.std():.5f}, fairseq {want:.5f}"
                checked.add(name)
    rest = set(params) - checked
    for name in rest:
        want = 1.0 if "layer_norm.weight" in name else 0.0
        assert "layer_norm" in name or name.endswith("out_proj.bias"), f"{name} has no expected init"
        assert bool((params[name] == want).all()), f"{name} should start at {want}"
