"""A user error on several ranks: one line per distinct error, exit code 2, no traceback.

Rank 0 prints its error; a non-zero rank prints its own as ``[rank N]`` unless every rank is known to
raise the same one (an agreed decision), which rank 0 alone prints. The ranks are real processes under
DeepSpeed's launcher, which ends with the failing rank's exit code and adds no traceback of its own.
"""

import pytest

from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.launch import free_port
from adaptive_lm_ds.testing.distributed import launch, launcher_argv, rank_env
from tests import rank_errors_program
from tests.oracle import REPO

PROGRAM = "adaptive-lm-model-summary"


def run_two_ranks(mode: str):
    port = free_port()
    argv = launcher_argv("deepspeed", 2, port) + [str(REPO / "tests" / "rank_errors_program.py"), mode]
    return launch(argv, timeout=300, env=rank_env(), shm_job=(port, 2))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{PROGRAM}: error:")]


def test_an_error_on_rank_1_alone_is_printed_by_rank_1():
    result = run_two_ranks("rank1-alone")
    assert result.returncode == 2 and "Traceback" not in result.output
    assert error_lines(result.output) == [f"{PROGRAM}: error: [rank 1] {rank_errors_program.SHARD_ERROR}"]


def test_an_error_every_rank_agreed_on_is_printed_once():
    result = run_two_ranks("agreed")
    assert result.returncode == 2 and "Traceback" not in result.output
    assert error_lines(result.output) == [f"{PROGRAM}: error: {rank_errors_program.DECIDED_ERROR}"]


def raise_on_rank_1(error, monkeypatch, capsys) -> str:
    """``cli.run`` on rank 1 of a job whose program raises ``error``; what it printed on stderr."""
    from adaptive_lm_ds import cli
    from adaptive_lm_ds.commands import model_summary

    def fails(argv):
        raise error

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(model_summary, "main", fails)
    assert cli.run(PROGRAM, []) == cli.USER_ERROR_EXIT
    return capsys.readouterr().err


def test_a_layout_error_follows_from_the_flags_and_is_left_to_rank_0(monkeypatch, capsys):
    from adaptive_lm_ds.parallel import ParallelDims

    with pytest.raises(UserError) as layout:  # 2 ranks cannot hold 3 tensor-parallel shards
        ParallelDims.for_world(2, tp=3)
    assert raise_on_rank_1(layout.value, monkeypatch, capsys) == ""


def test_a_user_error_not_known_to_be_shared_is_printed_by_its_rank(monkeypatch, capsys):
    err = raise_on_rank_1(UserError("the input is bad; pass a good one"), monkeypatch, capsys)
    assert err.splitlines() == [f"{PROGRAM}: error: [rank 1] the input is bad; pass a good one"]


def test_a_config_error_from_the_flags_is_left_to_rank_0(monkeypatch, capsys):
    from adaptive_lm_ds.config import ModelConfig

    with pytest.raises(UserError) as config:  # the same flags fail the same check on every rank
        ModelConfig(vocab_size=100, embed_dim=250, num_heads=8).validate()
    assert raise_on_rank_1(config.value, monkeypatch, capsys) == ""
