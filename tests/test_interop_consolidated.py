"""The consolidated model folder: round trip, tie record, atomic replace, clear errors, TP sharding."""

import hashlib
import json

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.checkpoint import CheckpointError, integrity
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.formats.consolidated import (
    ConsolidatedFormatError,
    load_consolidated,
    save_consolidated,
)
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.model.lm import AdaptiveLM
from adaptive_lm_ds.model.sharding import tied_names


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
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "checksums.sha256",
        "config.json",
        "model.safetensors",
    ]


def test_missing_and_corrupt_files_are_named(tmp_path, model_and_state):
    model, state = model_and_state
    with pytest.raises(ConsolidatedFormatError, match="config.json"):
        load_consolidated(tmp_path)
    save_consolidated(tmp_path / "m", model.cfg, state)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConsolidatedFormatError, match="model.safetensors"):
        load_consolidated(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    integrity.write_manifest(tmp_path / "m", ["config.json", "model.safetensors"])  # checksums updated by hand
    with pytest.raises(ConsolidatedFormatError, match="not valid JSON"):
        load_consolidated(tmp_path / "m")


def test_the_folder_lists_the_sha256_of_each_file(tmp_path, model_and_state):
    model, state = model_and_state
    save_consolidated(tmp_path / "m", model.cfg, state, _dictionary(200))
    listed = (tmp_path / "m" / integrity.MANIFEST).read_text().splitlines()
    want = [f"{hashlib.sha256((tmp_path / 'm' / n).read_bytes()).hexdigest()}  {n}" for n in ("config.json", "dict.txt",
            "model.safetensors")]  # fmt: skip
    assert listed == want


def flip_tensor_byte(path, where=2 / 3, count=1):
    """``count`` bytes inverted at ``where`` of the file: inside the tensor data, past the header."""
    raw = bytearray(path.read_bytes())
    at = int(len(raw) * where)
    raw[at : at + count] = bytes(b ^ 0xFF for b in raw[at : at + count])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("count", [1, 64])
def test_a_flipped_byte_in_the_tensor_data_is_refused_naming_the_file(tmp_path, model_and_state, count):
    model, state = model_and_state
    save_consolidated(tmp_path / "m", model.cfg, state)
    flip_tensor_byte(tmp_path / "m" / "model.safetensors", count=count)
    with pytest.raises(ConsolidatedFormatError, match="model.safetensors is damaged: its sha256 differs") as error:
        load_consolidated(tmp_path / "m")
    assert "\n" not in str(error.value) and "export or convert the model again" in str(error.value)


@pytest.mark.parametrize("damage", ["removed", "emptied", "unlisted-dict"])
def test_a_folder_whose_checksums_cannot_vouch_for_it_is_refused(tmp_path, model_and_state, damage):
    model, state = model_and_state
    save_consolidated(tmp_path / "m", model.cfg, state)
    manifest = tmp_path / "m" / integrity.MANIFEST
    if damage == "removed":
        manifest.unlink()
    elif damage == "emptied":
        manifest.write_text("")
    else:  # a dictionary slipped in after the save would be read unchecked
        _dictionary(200).save(tmp_path / "m" / "dict.txt")
    with pytest.raises(ConsolidatedFormatError, match="missing|lists no files|dict.txt is not listed"):
        load_consolidated(tmp_path / "m")


def test_every_reader_of_a_model_folder_verifies_it(tmp_path, model_and_state, capsys):
    """eval and generate (load_model_source), --init-from, --to-fairseq: one line naming the damaged file."""
    from adaptive_lm_ds.commands import convert_fairseq_ckpt
    from adaptive_lm_ds.inference.loading import load_model_source
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.trainer import model_config_for

    model, state = model_and_state
    save_consolidated(tmp_path / "m", model.cfg, state)
    flip_tensor_byte(tmp_path / "m" / "model.safetensors")
    with pytest.raises(ConsolidatedFormatError, match="model.safetensors is damaged"):
        load_model_source(tmp_path / "m")
    init_from = config_from_args(build_parser("t").parse_args(["--data", "d", "--init-from", str(tmp_path / "m")]))
    with pytest.raises(ConsolidatedFormatError, match="model.safetensors is damaged"):
        model_config_for(init_from, vocab_size=200)
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        convert_fairseq_ckpt.main(["--to-fairseq", "--input", str(tmp_path / "m"), "--output", str(tmp_path / "m.pt")])
    assert not (tmp_path / "m.pt").exists()


def test_dictionary_of_the_wrong_size_is_refused(tmp_path, model_and_state):
    model, state = model_and_state
    with pytest.raises(ConsolidatedFormatError, match="201"):
        save_consolidated(tmp_path / "m", model.cfg, state, _dictionary(201))


def test_load_weights_rejects_a_state_dict_of_another_model(model_and_state):
    model, state = model_and_state
    wrong = dict(state)
    wrong.pop("layers.0.ffn.fc1.bias")
    wrong["unexpected.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="fc1.bias.*unexpected.weight"):
        load_weights(model, wrong)
