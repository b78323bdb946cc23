"""fairseq checkpoint <-> consolidated model: the real fixture, built variants, and bad input."""

import argparse

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.interop import (
    FairseqConversionError,
    fairseq_to_ours,
    load_fairseq_checkpoint,
    ours_to_fairseq,
    safe_load,
)
from adaptive_lm_ds.model.lm import AdaptiveLM
from tests.fairseq_reference import make_fairseq_checkpoint, reference_log_probs


@pytest.fixture(scope="module")
def tp1():
    with parallel.single_process():
        yield


def _our_model(cfg, state):
    model = AdaptiveLM(cfg).eval()
    load_weights(model, state)
    return model


# --------------------------------------------------------------------------- the real fairseq fixture


def test_fixture_converts_with_the_shapes_fairseq_saved(wiki103_tiny_fixture):
    cfg, state = load_fairseq_checkpoint(wiki103_tiny_fixture / "checkpoint.pt")
    fairseq_shapes = {}
    for line in (wiki103_tiny_fixture / "keys.txt").read_text().splitlines():
        key, shape, _ = line.split("\t")
        fairseq_shapes[key] = [int(s) for s in shape.strip("[]").split(",")]
    assert cfg.vocab_size == sum(fairseq_shapes[f"decoder.embed_tokens.embeddings.{i}.0.weight"][0] for i in range(3))
    assert cfg.adaptive_input_cutoffs == (1000, 5000) and cfg.tie_adaptive_weights and cfg.tie_adaptive_proj
    written = ours_to_fairseq(cfg, state)["model"]
    assert {k: list(v.shape) for k, v in written.items()} == fairseq_shapes


def test_fixture_reproduces_fairseq_log_probs(wiki103_tiny_fixture, tp1):
    cfg, state = load_fairseq_checkpoint(wiki103_tiny_fixture / "checkpoint.pt")
    ref = torch.load(wiki103_tiny_fixture / "logprobs.pt", weights_only=True)
    model = _our_model(cfg, state)
    with torch.no_grad():
        lp = model.target_log_probs(ref["src_tokens"], ref["target"])
        full = model.gather_log_probs(model.log_probs(ref["src_tokens"][:1, :8]))[0]
    assert (lp.double() - ref["logprobs"]).abs().max() <= 1e-5
    expected_full = ref["full_logprobs_first_block_first_8_positions"]
    assert full.shape == expected_full.shape
    assert (full - expected_full).abs().max() <= 1e-5
    assert torch.logsumexp(full.double(), -1).abs().max() < 1e-5


def test_fixture_round_trip_returns_identical_tensors(wiki103_tiny_fixture):
    original = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    cfg, state = fairseq_to_ours(original)
    back = ours_to_fairseq(cfg, state)
    assert back["model"].keys() == original["model"].keys()
    for key, tensor in original["model"].items():
        if key.endswith("._float_tensor"):  # fairseq's uninitialised placeholder: only its type matters
            assert back["model"][key].dtype == tensor.dtype and back["model"][key].shape == tensor.shape
        else:
            assert torch.equal(back["model"][key], tensor), key
    # tied pairs are one tensor again, as fairseq saves them
    assert (
        back["model"]["decoder.adaptive_softmax.tail.1.2.weight"]
        is back["model"]["decoder.embed_tokens.embeddings.2.0.weight"]
    )
    fixture_model_args = original["cfg"]["model"]
    for key, value in back["cfg"]["model"].items():
        if key in fixture_model_args and key != "_name":
            assert value == fixture_model_args[key], key


# --------------------------------------------------------------------------- variants the fixture lacks

VARIANTS = {
    "untied_learned_finalnorm_gelu_legacy_args": dict(
        tie_weights=False, tie_proj=False, learned_pos=True, final_norm=True, activation="gelu",
        legacy_in_proj=True, as_namespace=True,
    ),
    "four_bands_factor3_tied_tables_untied_proj": dict(
        d=36, heads=6, cutoffs=(10, 30, 70), factor=3.0, tie_weights=True, tie_proj=False
    ),
    "tied_factor2_unscaled_embedding": dict(cutoffs=(16, 40, 90), factor=2.0, no_scale=True),
    "adaptive_input_full_softmax": dict(adaptive_softmax=False, tie_weights=False, tie_proj=False, final_norm=True),
    "full_input_adaptive_softmax_untied": dict(adaptive_input=False, tie_weights=False, tie_proj=False),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_independent_fairseq_reference(name, tp1):
    checkpoint = make_fairseq_checkpoint(**VARIANTS[name])
    cfg, state = fairseq_to_ours(checkpoint)
    tokens = torch.randint(2, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    args = checkpoint["cfg"]["model"] if checkpoint.get("cfg") else vars(checkpoint["args"])
    expected = reference_log_probs(checkpoint["model"], args, tokens)
    with torch.no_grad():
        model = _our_model(cfg, state)
        ours = model.gather_log_probs(model.log_probs(tokens)).double()
        picked = model.target_log_probs(tokens[:, :-1], tokens[:, 1:]).double()
    assert (ours - expected).abs().max() < 1e-4
    assert (picked - expected[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)).abs().max() < 1e-4


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_round_trips_through_fairseq_layout(name):
    checkpoint = make_fairseq_checkpoint(**VARIANTS[name])
    cfg, state = fairseq_to_ours(checkpoint)
    back = ours_to_fairseq(cfg, state)
    cfg2, state2 = fairseq_to_ours(back)
    assert cfg2 == cfg and state2.keys() == state.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    if not VARIANTS[name].get("legacy_in_proj"):  # fused in_proj comes back as q/k/v, as current fairseq writes
        assert back["model"].keys() == checkpoint["model"].keys()
        assert all(torch.equal(back["model"][k], v) for k, v in checkpoint["model"].items())


def test_args_and_cfg_checkpoints_give_the_same_model():
    from_cfg = fairseq_to_ours(make_fairseq_checkpoint(seed=3))
    from_args = fairseq_to_ours(make_fairseq_checkpoint(seed=3, as_namespace=True))
    assert from_cfg[0] == from_args[0]
    assert all(torch.equal(from_cfg[1][k], from_args[1][k]) for k in from_cfg[1])


# --------------------------------------------------------------------------- errors


def test_unknown_key_is_named():
    checkpoint = make_fairseq_checkpoint()
    checkpoint["model"]["decoder.layers.0.self_attn.mystery.weight"] = torch.zeros(2)
    with pytest.raises(FairseqConversionError, match="mystery"):
        fairseq_to_ours(checkpoint)


def test_missing_key_is_named():
    checkpoint = make_fairseq_checkpoint()
    del checkpoint["model"]["decoder.layers.1.fc2.bias"]
    with pytest.raises(FairseqConversionError, match="decoder.layers.1.fc2.bias"):
        fairseq_to_ours(checkpoint)


def test_post_norm_architecture_is_refused_by_name():
    checkpoint = make_fairseq_checkpoint()
    checkpoint["cfg"]["model"]["decoder_normalize_before"] = False
    with pytest.raises(FairseqConversionError, match="decoder_normalize_before"):
        fairseq_to_ours(checkpoint)


def test_unsupported_option_is_refused_by_name():
    checkpoint = make_fairseq_checkpoint(as_namespace=True)
    checkpoint["args"].character_embeddings = True
    with pytest.raises(FairseqConversionError, match="character_embeddings"):
        fairseq_to_ours(checkpoint)


def test_tied_names_that_differ_are_refused():
    checkpoint = make_fairseq_checkpoint()
    checkpoint["model"]["decoder.adaptive_softmax.head.word_proj.weight"] = torch.zeros(20, 32)
    with pytest.raises(FairseqConversionError, match="tied"):
        fairseq_to_ours(checkpoint)


def test_checkpoint_without_config_is_refused():
    with pytest.raises(FairseqConversionError, match="neither cfg"):
        fairseq_to_ours({"model": make_fairseq_checkpoint()["model"], "args": None, "cfg": None})


def test_namespace_model_args_are_read():
    checkpoint = make_fairseq_checkpoint()
    checkpoint["cfg"]["model"] = argparse.Namespace(**checkpoint["cfg"]["model"])
    assert fairseq_to_ours(checkpoint)[0].num_heads == 4


def test_written_checkpoint_has_what_fairseqs_trainer_saves(wiki103_tiny_fixture):
    """Every cfg section and model key of a checkpoint fairseq-train saved; what its loaders read."""
    original = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    cfg, state = fairseq_to_ours(original)
    back = ours_to_fairseq(cfg, state, data="data-bin")
    assert list(back["cfg"]) == list(original["cfg"])  # all 20 sections, in fairseq's order
    assert back["cfg"]["model"].keys() == original["cfg"]["model"].keys()  # the arch's 51 keys
    assert back["cfg"]["model"]["_name"] == original["cfg"]["model"]["_name"] == "transformer_lm_wiki103"
    assert back["cfg"]["task"]["data"] == "data-bin" and back["cfg"]["criterion"]["_name"] == "adaptive_loss"
    for section, values in back["cfg"].items():
        if isinstance(values, dict):
            assert values.keys() == original["cfg"][section].keys(), section
    history = back["optimizer_history"][-1]
    assert history.keys() == original["optimizer_history"][-1].keys()
    assert history["lr_scheduler_state"] == {"best": None} and history["num_updates"] == 0
    assert {"metrics", "previous_training_time", "train_iterator", "val_loss"} <= back["extra_state"].keys()
