"""Two runs on one machine on the default rendezvous port: the second stops with one line naming the port."""

import socket
import sys

import pytest

from adaptive_lm_ds.launch import LOOPBACK
from adaptive_lm_ds.testing.distributed import launch, rank_env

from .checkpoint_runs import LAUNCHER


def test_a_taken_port_is_one_line_naming_it_and_master_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:  # the first run's rendezvous
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = launch(
            [sys.executable, str(LAUNCHER), "--data", tmp_path, "--save-dir", tmp_path / "save"],
            timeout=120, env=rank_env({"MASTER_PORT": str(port)}),
        )  # fmt: skip
    assert result.returncode == 2, result.output[-3000:]
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == 1 and f"port {port} on 127.0.0.1 is already in use" in errors[0]
    assert "--master_port" in errors[0] and "Traceback" not in result.output


def test_a_program_started_on_ranks_with_a_taken_port_is_refused_before_any_rank_starts():
    from adaptive_lm_ds.launch import PortInUseError, run_program_on_ranks

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            run_program_on_ranks("adaptive-lm-write-layout", [], nprocs=1, port=port)
