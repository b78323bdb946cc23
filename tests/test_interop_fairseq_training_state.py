"""fairseq training checkpoint <-> TrainingState: the real fixture's optimizer state, built variants, refusals.

The reference for "which moment belongs to which parameter" is fairseq's own rule, recomputed here
independently: its optimizer numbers ``model.parameters()``, i.e. the model's tensors in state-dict
order with buffers left out and each tied tensor (one object under two names) counted once.
"""

import pytest
import torch

from adaptive_lm_ds.interop import FairseqConversionError, ours_to_fairseq, safe_load
from adaptive_lm_ds.interop.fairseq_training_state import (
    fairseq_iterator_state,
    fairseq_parameter_order,
    fairseq_restore_file,
    read_fairseq_training_state,
    write_fairseq_training_checkpoint,
)
from tests.fairseq_reference import make_fairseq_checkpoint


def _fairseq_parameters(model: dict) -> list[str]:
    """fairseq's optimizer order: parameters (no version/_float_tensor buffers), a tied tensor (one storage,
    which torch.save keeps shared) once."""
    seen, names = set(), []
    for name, tensor in model.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if name.endswith(("version", "_float_tensor")) or where in seen:
            continue
        seen.add(where)
        names.append(name)
    return names


def _with_optimizer_state(checkpoint: dict, kind: str = "nag", seed: int = 1) -> dict:
    """``checkpoint`` plus a random ``last_optimizer_state`` of fairseq's layout and a mid-epoch iterator."""
    g = torch.Generator().manual_seed(seed)
    names = _fairseq_parameters(checkpoint["model"])
    state = {}
    for i, name in enumerate(names):
        shape = checkpoint["model"][name].shape
        if kind == "nag":
            state[i] = {"momentum_buffer": torch.randn(shape, generator=g)}
        else:
            state[i] = {
                "step": 7,
                "exp_avg": torch.randn(shape, generator=g),
                "exp_avg_sq": torch.rand(shape, generator=g),
            }
    group = {"lr": 0.5, "lr_old": 0.25, "momentum": 0.99, "weight_decay": 0.0}
    if kind == "adam":
        group = {"lr": 0.5, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    optimizer = "FairseqNAG" if kind == "nag" else "FairseqAdam"
    history = [{"criterion_name": "AdaptiveLoss", "optimizer_name": optimizer, "lr_scheduler_state": {"best": None},
                "num_updates": 12}]  # fmt: skip
    iterator = {"version": 2, "epoch": 3, "iterations_in_epoch": 5, "shuffle": True}
    return dict(checkpoint, last_optimizer_state={"state": state, "param_groups": [{**group, "params": list(state)}]},
                optimizer_history=history, extra_state={"train_iterator": iterator})  # fmt: skip


def _saved(tmp_path, checkpoint: dict, name: str = "checkpoint_3_12.pt"):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


# --------------------------------------------------------------------------- the real fairseq fixture


def test_fairseq_numbers_the_parameters_in_the_order_the_writer_uses(wiki103_tiny_fixture):
    checkpoint = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    cfg, _ = read_fairseq_training_state(wiki103_tiny_fixture / "checkpoint.pt")
    assert fairseq_parameter_order(cfg) == _fairseq_parameters(checkpoint["model"])


def test_fixture_momentum_lands_on_the_parameter_fairseq_kept_it_for(wiki103_tiny_fixture):
    checkpoint = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    _, state = read_fairseq_training_state(wiki103_tiny_fixture / "checkpoint.pt")
    fairseq_state = checkpoint["last_optimizer_state"]["state"]
    names = _fairseq_parameters(checkpoint["model"])
    ours = state.moments["momentum_buffer"]
    assert torch.equal(ours["embed.tokens.bands.0.table.weight"], fairseq_state[0]["momentum_buffer"])
    assert names[0] == "decoder.embed_tokens.embeddings.0.0.weight"
    q = names.index("decoder.layers.1.self_attn.q_proj.weight")
    assert torch.equal(ours["layers.1.self_attn.q_proj.weight"], fairseq_state[q]["momentum_buffer"])
    cluster = names.index("decoder.adaptive_softmax.head.class_proj.weight")
    assert torch.equal(ours["output.cluster_proj.weight"], fairseq_state[cluster]["momentum_buffer"])
    assert ours.keys() == state.weights.keys()


def test_fixture_counters_are_the_files_own(wiki103_tiny_fixture):
    checkpoint = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    _, state = read_fairseq_training_state(wiki103_tiny_fixture / "checkpoint.pt")
    assert state.optimizer == "nag"
    assert state.num_updates == checkpoint["optimizer_history"][-1]["num_updates"] == 300
    assert state.lr_old == checkpoint["last_optimizer_state"]["param_groups"][0]["lr_old"]
    assert state.extra["fairseq_iterator"] == checkpoint["extra_state"]["train_iterator"]
    assert state.extra["fairseq_world_size"] == checkpoint["cfg"]["distributed_training"]["distributed_world_size"]
    assert state.data is None  # fairseq's batch order is not ours: the iterator state says where it stood


def test_written_checkpoint_holds_fairseqs_optimizer_state_bit_for_bit(wiki103_tiny_fixture, tmp_path):
    original = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    cfg, state = read_fairseq_training_state(wiki103_tiny_fixture / "checkpoint.pt")
    out = tmp_path / "handed_back.pt"
    write_fairseq_training_checkpoint(
        out, cfg, state, optimizer_settings={"momentum": 0.99}, iterator=state.extra["fairseq_iterator"]
    )
    written = safe_load(out)
    theirs, ours = original["last_optimizer_state"], written["last_optimizer_state"]
    assert ours["state"].keys() == theirs["state"].keys()
    for i in theirs["state"]:
        assert torch.equal(ours["state"][i]["momentum_buffer"], theirs["state"][i]["momentum_buffer"]), i
    for key in ("lr_old", "momentum", "weight_decay", "params"):
        assert ours["param_groups"][0][key] == theirs["param_groups"][0][key], key
    history = written["optimizer_history"][-1]
    for key in ("criterion_name", "optimizer_name", "num_updates"):
        assert history[key] == original["optimizer_history"][-1][key], key
    assert written["extra_state"]["train_iterator"] == original["extra_state"]["train_iterator"]
    for name, tensor in original["model"].items():
        if name.endswith("_float_tensor"):  # fairseq's uninitialised placeholders
            continue
        assert torch.equal(written["model"][name], tensor), name
    assert not list(tmp_path.glob(".*.tmp"))


def test_fp16_flat_master_state_reads_as_the_per_parameter_state(wiki103_tiny_fixture, tmp_path):
    checkpoint = safe_load(wiki103_tiny_fixture / "checkpoint.pt")
    optim = checkpoint["last_optimizer_state"]
    flat = torch.cat([optim["state"][i]["momentum_buffer"].reshape(-1) for i in sorted(optim["state"])])
    fp16 = dict(optim, state={0: {"momentum_buffer": flat}}, loss_scale=128.0)
    fp16["param_groups"] = [dict(optim["param_groups"][0], params=[0])]
    path = _saved(tmp_path, dict(checkpoint, last_optimizer_state=fp16))
    _, per_parameter = read_fairseq_training_state(wiki103_tiny_fixture / "checkpoint.pt")
    _, flat_master = read_fairseq_training_state(path)
    for name, moment in per_parameter.moments["momentum_buffer"].items():
        assert torch.equal(flat_master.moments["momentum_buffer"][name], moment), name


# --------------------------------------------------------------------------- built variants


def test_untied_fused_moments_split_like_their_weights(tmp_path):
    built = make_fairseq_checkpoint(tie_weights=False, tie_proj=False, legacy_in_proj=True, d=32)
    checkpoint = _with_optimizer_state(built)
    cfg, state = read_fairseq_training_state(_saved(tmp_path, checkpoint))
    names = _fairseq_parameters(checkpoint["model"])
    buffers = {n: checkpoint["last_optimizer_state"]["state"][i]["momentum_buffer"] for i, n in enumerate(names)}
    ours = state.moments["momentum_buffer"]
    in_proj = buffers["decoder.layers.0.self_attn.in_proj_weight"]
    assert torch.equal(ours["layers.0.self_attn.k_proj.weight"], in_proj[32:64])
    head = buffers["decoder.adaptive_softmax.head.weight"]
    assert torch.equal(ours["output.tables.0.weight"], head[:20])  # cutoffs 20, 60: band 0 | two cluster rows
    assert torch.equal(ours["output.cluster_proj.weight"], head[20:])
    assert torch.equal(ours["output.tail_projs.1.weight"], buffers["decoder.adaptive_softmax.tail.1.0.weight"])


def test_adam_state_round_trips_through_a_written_checkpoint(tmp_path):
    cfg, state = read_fairseq_training_state(_saved(tmp_path, _with_optimizer_state(make_fairseq_checkpoint(), "adam")))
    assert (state.optimizer, state.adam_step, state.lr_old) == ("adam", 7, None)
    out = tmp_path / "back.pt"
    settings = {"lr": 0.5, "adam_betas": (0.9, 0.98), "adam_eps": 1e-8}
    write_fairseq_training_checkpoint(out, cfg, state, optimizer_settings=settings, iterator={"epoch": 3,
                                      "iterations_in_epoch": 5})  # fmt: skip
    _, again = read_fairseq_training_state(out)
    assert (again.optimizer, again.adam_step, again.num_updates) == ("adam", 7, 12)
    for key in ("exp_avg", "exp_avg_sq"):
        for name, moment in state.moments[key].items():
            assert torch.equal(again.moments[key][name], moment), (key, name)
    assert again.extra["fairseq_iterator"]["iterations_in_epoch"] == 5


# --------------------------------------------------------------------------- refusals


def test_a_weights_only_checkpoint_cannot_be_continued_mid_schedule(tmp_path):
    cfg, state = read_fairseq_training_state(_saved(tmp_path, _with_optimizer_state(make_fairseq_checkpoint())))
    path = _saved(tmp_path, ours_to_fairseq(cfg, dict(state.weights)), "weights_only.pt")
    with pytest.raises(FairseqConversionError, match="holds no optimizer state.*--init-from"):
        read_fairseq_training_state(path)


def test_amsgrad_state_is_refused(tmp_path):
    checkpoint = _with_optimizer_state(make_fairseq_checkpoint(), "adam")
    checkpoint["last_optimizer_state"]["param_groups"][0]["amsgrad"] = True
    with pytest.raises(FairseqConversionError, match="amsgrad"):
        read_fairseq_training_state(_saved(tmp_path, checkpoint))


def test_a_sharded_optimizer_state_is_refused(tmp_path):
    checkpoint = _with_optimizer_state(make_fairseq_checkpoint())
    state = checkpoint["last_optimizer_state"]["state"]
    checkpoint["last_optimizer_state"]["state"] = {i: state[i] for i in list(state)[:3]}
    with pytest.raises(FairseqConversionError, match="3 parameter state"):
        read_fairseq_training_state(_saved(tmp_path, checkpoint))


# --------------------------------------------------------------------------- the data position handed back


def test_a_fairseq_order_position_is_fairseqs_iterator_state():
    position = {"order": "fairseq", "epoch": 0, "position": 15, "num_batches": 50, "dp_size": 1, "shuffle": True}
    state = fairseq_iterator_state(position)
    assert (state["epoch"], state["iterations_in_epoch"]) == (1, 15)  # fairseq counts epochs from 1


def test_an_exhausted_fairseq_epoch_is_saved_as_the_next_ones_start():
    # 7 batches over 2 ranks: each rank's shard has ceil(7 / 2) = 4 (the last one filled), as fairseq shards
    position = {"order": "fairseq", "epoch": 2, "position": 4, "num_batches": 7, "dp_size": 2, "shuffle": True}
    state = fairseq_iterator_state(position)
    assert (state["epoch"], state["iterations_in_epoch"]) == (4, 0)


def test_our_order_converts_at_an_epochs_start_only():
    start = {"epoch": 1, "position": 0, "seed": 1, "shuffle": True, "global_batch_size": 4, "num_samples": 99}
    assert fairseq_iterator_state(start)["epoch"] == 2
    with pytest.raises(FairseqConversionError, match="3 batches into epoch 2 of this project's batch order"):
        fairseq_iterator_state(dict(start, position=3))


def test_restore_file_names_a_fairseq_checkpoint_as_given_or_inside_the_save_dir(tmp_path):
    (tmp_path / "save" / "checkpoint_7").mkdir(parents=True)  # a tag folder of ours is not fairseq's
    (tmp_path / "save" / "checkpoint_last.pt").write_bytes(b"")
    given = tmp_path / "elsewhere.pt"
    given.write_bytes(b"")
    assert fairseq_restore_file(str(given), tmp_path / "save") == given
    assert fairseq_restore_file("checkpoint_last.pt", tmp_path / "save") == tmp_path / "save" / "checkpoint_last.pt"
    assert fairseq_restore_file("checkpoint_7", tmp_path / "save") is None
    assert fairseq_restore_file("checkpoint_last", tmp_path / "save") is None


# --------------------------------------------------------------------------- the trainer's side of a takeover


def _train_config(*flags: str):
    from adaptive_lm_ds.training.config import build_parser, config_from_args

    return config_from_args(build_parser("takeover").parse_args(["--data", "data-bin", *flags]))


def test_taking_over_a_fairseq_run_turns_on_fairseqs_batch_order(wiki103_tiny_fixture):
    from adaptive_lm_ds.training.trainer import fairseq_takeover_order

    takeover = _train_config("--restore-file", str(wiki103_tiny_fixture / "checkpoint.pt"))
    assert takeover.data.batch_order == "ours"  # the flag's default...
    assert fairseq_takeover_order(takeover).data.batch_order == "fairseq"  # ...which a takeover changes
    ours = _train_config("--restore-file", "checkpoint_7")
    assert fairseq_takeover_order(ours) is ours


def test_a_fairseq_run_taken_over_keeps_its_model_with_this_runs_dropout(wiki103_tiny_fixture):
    from adaptive_lm_ds.training.trainer import model_config_for

    checkpoint = wiki103_tiny_fixture / "checkpoint.pt"
    saved, _ = read_fairseq_training_state(checkpoint)
    model, weights = model_config_for(
        _train_config("--restore-file", str(checkpoint), "--dropout", "0"), saved.vocab_size
    )
    assert model == saved.replace(dropout=0.0)
    assert weights is None  # they come with the training state, when the run resumes
