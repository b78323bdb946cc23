"""The consolidated model folder: round trip, tie record, atomic replace, clear errors, TP sharding."""

import json

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.formats.consolidated import (
    ConsolidatedFormatError,
    load_consolidated,
    load_into,
    save_consolidated,
    tied_names,
)
from adaptive_lm_ds.model.lm import AdaptiveLM


@pytest.fixture(scope="module")
def model_and_state():
    with parallel.single_process():
        model = AdaptiveLM(tiny(vocab_size=200))
        yield model, {k: v.detach().clone() for k, v in model.named_parameters()}


def _dictionary(n):
    d = Dictionary()
    for i in range(n - len(d)):
        d.add_symbol(f"w{i}", n - i)
    return d


def test_round_trip_keeps_config_tensors_ties_and_dictionary(tmp_path, model_and_state):
    model, state = model_and_state
    save_consolidated(tmp_path / "m", model.cfg, state, _dictionary(200))
    cfg, loaded, dictionary = load_consolidated(tmp_path / "m")
    assert cfg == model.cfg and loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert dictionary.symbols == _dictionary(200).symbols
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["format"] == "adaptive-lm-ds/consolidated" and meta["version"] == 1
    assert meta["tied"]["output.bands.1.table.weight"] == "embed.tokens.bands.1.table.weight"
    # every alias is a name the one-piece model really shares with its owner
    params = dict(model.named_parameters(remove_duplicate=False))
    assert all(params[alias] is params[owner] for alias, owner in tied_names(model.cfg).items())


def test_save_replaces_its_previous_output_and_leaves_no_temp(tmp_path, model_and_state):
    model, state = model_and_state
    save_consolidated(tmp_path / "m", model.cfg, state, _dictionary(200))
    save_consolidated(tmp_path / "m", model.cfg, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_missing_and_corrupt_files_are_named(tmp_path, model_and_state):
    model, state = model_and_state
    with pytest.raises(ConsolidatedFormatError, match="config.json"):
        load_consolidated(tmp_path)
    save_consolidated(tmp_path / "m", model.cfg, state)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConsolidatedFormatError, match="model.safetensors"):
        load_consolidated(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ConsolidatedFormatError, match="not valid JSON"):
        load_consolidated(tmp_path / "m")


def test_dictionary_of_the_wrong_size_is_refused(tmp_path, model_and_state):
    model, state = model_and_state
    with pytest.raises(ConsolidatedFormatError, match="201"):
        save_consolidated(tmp_path / "m", model.cfg, state, _dictionary(201))


def test_load_into_rejects_a_state_dict_of_another_model(model_and_state):
    model, state = model_and_state
    wrong = dict(state)
    wrong.pop("layers.0.ffn.fc1.bias")
    wrong["unexpected.weight"] = torch.zeros(1)
    with pytest.raises(ConsolidatedFormatError, match="fc1.bias.*unexpected.weight"):
        load_into(model, wrong)
