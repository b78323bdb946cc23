"""Start ranks of one of this package's programs on this machine, from a program (no launcher needed by hand).

A DeepSpeed checkpoint of a TP x PP layout can only be written by TP x PP ranks, so a one-process tool that
needs one (``adaptive-lm-convert --tensor-model-parallel-size 2 ...``) starts them itself:
``python -m torch.distributed.run ... -m adaptive_lm_ds PROGRAM ...`` with this interpreter, so the ranks
import the same installed package (no ``PYTHONPATH`` set by hand) and do the programs' start-up
(adaptive_lm_ds/cli.py). The multi-rank test harness (adaptive_lm_ds/testing/distributed.py) builds on
:func:`free_port` and :data:`LOOPBACK` too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

from adaptive_lm_ds.errors import UserError

LOOPBACK = "127.0.0.1"


class PortInUseError(UserError, RuntimeError):
    """The rendezvous port is taken (another run on this machine): the line names it and the flag."""


def port_in_use(port: int | str, addr: str) -> PortInUseError:
    return PortInUseError(
        f"port {port} on {addr} is already in use (another run on this machine?); pass another free port with "
        "--master_port (or set MASTER_PORT)"
    )


def is_free(port: int, addr: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def program_on_ranks_argv(program: str, args: Sequence[str], nprocs: int, port: int) -> list[str]:
    """The command line that runs ``program`` (a name of ``cli.PROGRAMS``) on ``nprocs`` local ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nprocs}", f"--master_addr={LOOPBACK}",
        f"--master_port={port}", "-m", "adaptive_lm_ds", program, *map(str, args),
    ]  # fmt: skip


def run_program_on_ranks(program: str, args: Sequence[str], nprocs: int, port: int | None = None) -> int:
    """Run ``program`` on ``nprocs`` ranks of this machine (output goes to ours) and return its exit code.

    ``port``: the rendezvous port (default: a free one; a taken one raises :class:`PortInUseError` before
    any rank starts).
    Each rank uses one thread unless ``OMP_NUM_THREADS`` says otherwise.
    """
    if port and not is_free(port):  # torchrun would end in a DistNetworkError traceback
        raise port_in_use(port, LOOPBACK)
    argv = program_on_ranks_argv(program, args, nprocs, port or free_port())
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(argv, env=env).returncode
