"""Tied parameters are one tensor with one gradient fed by input and output; untied ones are not."""

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.model import AdaptiveLM

VOCAB = 120


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    with parallel.single_process(seed=0):
        yield


def _backward(model):
    tokens = torch.tensor([[5, 6, 7, 30, 100]])  # inputs use head rows 5-7 only
    targets = torch.tensor([[8, 9, 31, 101, 102]])
    loss, _ = model(tokens, targets)
    loss.backward()


def test_tied_tables_and_projections_are_one_parameter_fed_by_both_sides():
    model = AdaptiveLM(tiny(VOCAB, cutoffs=(12, 48)))
    for i in range(3):
        assert model.output.table(i).weight is model.embed.bands[i].table.weight
    assert model.output.tail_projs is None  # the tails use bands[i].proj transposed
    assert model.output.bands is model.embed.bands
    state = model.state_dict()
    assert state["embed.tokens.bands.1.proj.weight"].data_ptr() == state["output.bands.1.proj.weight"].data_ptr()
    _backward(model)
    head_grad = model.embed.bands[0].table.weight.grad
    assert head_grad[5:8].abs().sum() > 0  # input lookups
    assert head_grad[10].abs().sum() > 0  # never an input: only the softmax reaches this row


def test_untied_tables_are_separate_and_get_separate_gradients():
    model = AdaptiveLM(tiny(VOCAB, cutoffs=(12, 48), tie_adaptive_weights=False, tie_adaptive_proj=False))
    input_table = model.embed.bands[0].table.weight
    output_table = model.output.table(0).weight
    assert input_table is not output_table and input_table.data_ptr() != output_table.data_ptr()
    assert model.output.bands is None
    _backward(model)
    assert input_table.grad[5:8].abs().sum() > 0
    assert torch.count_nonzero(input_table.grad[10]) == 0  # the softmax does not reach the input table
    assert output_table.grad[10].abs().sum() > 0


def test_tied_tables_untied_projections():
    model = AdaptiveLM(tiny(VOCAB, cutoffs=(12, 48), tie_adaptive_proj=False))
    assert model.output.table(1).weight is model.embed.bands[1].table.weight
    assert model.output.tail_projs[0].weight is not model.embed.bands[1].proj.weight
    assert model.output.tied_weight_attrs() == [f"bands.{i}.table.weight" for i in range(3)]
    assert model.embed.tied_weight_attrs() == [f"tokens.bands.{i}.table.weight" for i in range(3)]
