"""A pipeline checkpoint of a model whose tables are tied but whose tail projections are not (the GBW
models' tying) reads back offline with every one-piece tensor: the untied projections (``output.tail_projs``),
which only the last stage holds, are kept, and of the tied tensors only the embedding's copy is read (the
last stage's ``output.bands.*`` copies are exactly the model's ``tied_names``)."""

import pytest
import torch

from adaptive_lm_ds.testing import run_on_ranks

from .training_runs import save_initial_weights, train_on_rank


@pytest.fixture(scope="module")
def untied_pp2_checkpoint(tiny_run_setup, tmp_path_factory):
    data, _ = tiny_run_setup
    root = tmp_path_factory.mktemp("untied-proj")
    init = str(root / "init")
    run_on_ranks(save_initial_weights, nprocs=1, data_bin=str(data), out_dir=init, tie_adaptive_proj=False)
    argv = [
        "--data", str(data), "--init-from", init, "--tokens-per-sample", "32", "--batch-size", "4",
        "--max-update", "1", "--lr", "0.1", "--validate-interval-updates", "0", "--max-valid-steps", "1",
        "--pipeline-model-parallel-size", "2", "--save-dir", str(root / "save"),
    ]  # fmt: skip
    (result, _) = run_on_ranks(train_on_rank, nprocs=2, timeout=300, argv=argv)
    assert result["error"] is None, result["error"]
    return root / "save" / "checkpoint_1"


def test_offline_read_keeps_the_last_stages_untied_projections(untied_pp2_checkpoint):
    from adaptive_lm_ds.checkpoint import names
    from adaptive_lm_ds.checkpoint.record import read_record
    from adaptive_lm_ds.checkpoint.safe_files import load_file
    from adaptive_lm_ds.formats.state_reader import read_weights
    from adaptive_lm_ds.model.sharding import tied_names

    record = read_record(untied_pp2_checkpoint)
    cfg = record.model_config()
    assert cfg.tie_adaptive_weights and not cfg.tie_adaptive_proj
    last = load_file(untied_pp2_checkpoint / names.layer_states_file(cfg.num_layers + 1, 0))
    projections = [k for k in last if k.startswith("output.tail_projs.")]
    assert projections  # the tail bands project, and only the last stage holds those projections
    weights = read_weights(untied_pp2_checkpoint, record)
    for key in projections:
        torch.testing.assert_close(weights[key], last[key], rtol=0, atol=0)
    assert sorted(k for k in last if k in tied_names(cfg)) == sorted(tied_names(cfg))  # the tables' copies
    first = load_file(untied_pp2_checkpoint / names.layer_states_file(0, 0))
    table = "tokens.bands.1.table.weight"  # a tied table: the embedding's (layer 0) is the one-piece tensor
    torch.testing.assert_close(weights[f"embed.{table}"], first[table], rtol=0, atol=0)
