"""Command lines: no abbreviations, fairseq-train's flags (and refusals), both launchers, the paper's command."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from adaptive_lm_ds import logs
from adaptive_lm_ds.config import get_preset
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.testing import run_script
from adaptive_lm_ds.testing.distributed import free_port
from adaptive_lm_ds.training.config import build_parser, config_from_args, model_config
from tests.oracle import FIXTURE_A, REPO, shared_or_skip

from .training_runs import make_data_bin

# The paper's fairseq-train command line, verbatim after the program name.
SEED_COMMAND = (
    "--task language_modeling data-bin/wikitext-103 --save-dir checkpoints/transformer_wikitext-103 "
    "--arch transformer_lm_wiki103 --max-update 286000 --lr 1.0 --t-mult 2 --lr-period-updates 270000 "
    "--lr-scheduler cosine --lr-shrink 0.75 --warmup-updates 16000 --warmup-init-lr 1e-07 --stop-min-lr 1e-09 "
    "--optimizer nag --min-lr 0.0001 --clip-norm 0.1 --criterion adaptive_loss --max-tokens 3072 --update-freq 3 "
    "--tokens-per-sample 3072 --seed 1 --sample-break-mode none --skip-invalid-size-inputs-valid-test "
    "--ddp-backend=legacy_ddp"
).split()
# What makes it fit a CPU: a small model of the same arch (fairseq's model flags), 3 updates. The batch
# flags stay the paper's: 3072-token blocks, one per micro batch, update-freq 3.
CPU_SIZE = (
    "--decoder-layers 2 --decoder-embed-dim 64 --decoder-input-dim 64 --decoder-output-dim 64 "
    "--decoder-ffn-embed-dim 128 --decoder-attention-heads 4 --adaptive-input-cutoff 40,160 "
    "--adaptive-softmax-cutoff 40,160 --max-update 3 --log-interval 1"
).split()


def _parse(argv, defaults=None):
    return config_from_args(build_parser("t", defaults).parse_args(argv))


def test_abbreviated_flags_are_refused():
    with pytest.raises(SystemExit):
        _parse(["d", "--save-interval-update", "1"])  # argparse would have completed it


def test_unimplemented_fairseq_flag_stops_with_its_equivalent(capsys):
    with pytest.raises(SystemExit) as stop:
        _parse(["d", "--save-interval", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--save-interval-updates" in err


def test_adam_betas_are_parsed_once_from_fairseqs_spelling(capsys):
    assert _parse(["d", "--adam-betas", "(0.9, 0.98)"]).optim.adam_betas == (0.9, 0.98)
    with pytest.raises(SystemExit) as stop:
        _parse(["d", "--adam-betas", "(0.9)"])
    assert stop.value.code == 2 and "is not two betas" in capsys.readouterr().err


def test_positional_data_dir_and_fairseq_defaults():
    cfg = _parse(["data-bin/x", "--ddp-backend=legacy_ddp", "--skip-invalid-size-inputs-valid-test"])
    assert cfg.data.data == "data-bin/x" and cfg.optim.adam_betas == (0.9, 0.999) and cfg.optim.criterion == "nll"
    with pytest.raises(UserError, match="two data dirs"):
        _parse(["data-bin/x", "--data", "data-bin/y"])


def test_arch_is_the_fairseq_arch_refined_by_model_flags():
    plain = model_config(_parse(["d", "--arch", "transformer_lm_wiki103", "--tokens-per-sample", "3072"]), 267_744)
    assert plain == get_preset("wiki103", vocab_size=267_744)  # the preset is fairseq's arch
    small = model_config(_parse(["d", "--arch", "transformer_lm_wiki103", *CPU_SIZE]), 400)
    assert (small.num_layers, small.embed_dim, small.ffn_dim, small.num_heads) == (2, 64, 128, 4)
    assert small.adaptive_softmax_cutoffs == (40, 160) and small.tie_adaptive_proj and small.max_positions == 512
    gbw = model_config(_parse(["d", "--arch", "transformer_lm_gbw"]), 1000)
    assert (gbw.num_layers, gbw.embed_dim, gbw.num_heads, gbw.adaptive_softmax) == (12, 512, 16, False)


def test_decoder_projections_are_refused_by_name():
    from adaptive_lm_ds.interop.fairseq_cfg import FairseqArchError

    with pytest.raises(FairseqArchError, match="--decoder-input-dim 32"):
        model_config(_parse(["d", "--arch", "transformer_lm_wiki103", "--decoder-input-dim", "32"]), 400)


def test_every_multi_rank_parser_takes_deepspeeds_local_rank():
    from adaptive_lm_ds.commands import eval_lm

    assert build_parser("t").parse_args(["d", "--local_rank=0"]).local_rank == 0
    assert eval_lm.parse_args(["--path", "p", "--data", "d", "--local_rank=1"]).local_rank == 1


def test_eval_lm_runs_under_the_deepspeed_launcher(tmp_path):
    fixture = shared_or_skip(FIXTURE_A)
    out = tmp_path / "tp2.json"
    args = ["--path", fixture / "checkpoint.pt", "--data", fixture / "data-bin", "--tokens-per-sample", "128",
            "--max-samples", "8", "--tensor-model-parallel-size", "2", "--json", out]  # fmt: skip
    run_script(REPO / "tools" / "eval_lm.py", args, nprocs=2, launcher="deepspeed", timeout=300)
    assert json.loads(out.read_text())["tokens"] == 8 * 128


def test_the_seeds_fairseq_command_runs_under_the_wiki103_launcher(tmp_path):
    make_data_bin(tmp_path / "data-bin" / "wikitext-103")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "launchers" / "train_wiki103.py"), *SEED_COMMAND, *CPU_SIZE],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| model transformer_lm_wiki103: 2 layers, d 64" in out and "criterion adaptive_loss" in out
    assert "update-freq 3" in out and "updates per epoch" in out
    assert "| done: 3 updates" in out
    last = [line for line in out.splitlines() if "| update 3 / 3 |" in line][0]
    for field in ("wpb=", "bsz=3", "num_updates=3", "wall="):
        assert field in last
    ours = [line for line in out.splitlines() if " | adaptive_lm_ds." in line]
    assert len(ours) >= 6 and all(logs.PREFIX.match(line) for line in ours)  # fairseq's timestamped lines
    assert (tmp_path / "checkpoints" / "transformer_wikitext-103").is_dir()


def test_the_wiki103_recipe_is_the_papers_fairseq_command():
    """The recipe names only what differs from the config's defaults; together they are the paper's command."""
    from adaptive_lm_ds.training.config import parse_args

    recipe = config_from_args(parse_args(["data-bin/wikitext-103"], recipe="wiki103"))
    paper = _parse(SEED_COMMAND)
    assert recipe.optim == paper.optim
    assert recipe.data == dataclasses.replace(paper.data, skip_invalid_size_inputs_valid_test=False)  # a no-op flag
    assert (recipe.run.max_update, recipe.run.seed) == (paper.run.max_update, paper.run.seed) == (286000, 1)


class _Terminal:
    def isatty(self):
        return True


@pytest.mark.parametrize(
    ("terminal", "flag", "lead", "shown"),
    [(True, False, True, True), (False, False, True, False), (True, True, True, False), (True, False, False, False)],
)
def test_progress_bars_only_on_a_terminal_on_the_lead_rank_unless_no_progress_bar(
    terminal, flag, lead, shown, monkeypatch
):
    import argparse

    from adaptive_lm_ds import cli

    p = argparse.ArgumentParser()
    cli.add_progress_bar_flag(p)
    args = p.parse_args(["--no-progress-bar"] if flag else [])
    if terminal:
        monkeypatch.setattr(sys, "stderr", _Terminal())
    assert cli.shows_progress(args, lead) is shown
