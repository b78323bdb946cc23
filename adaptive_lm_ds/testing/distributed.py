"""Run a function or a script on N CPU ranks and collect what every rank returned.

Multi-rank tests must launch real processes the way users do (``torchrun`` or the ``deepspeed``
launcher) with the gloo backend and ``DS_ACCELERATOR=cpu``. This module is the one place that does
it, so every test gets the same guarantees:

* each rank's return value comes back, indexed by rank;
* a failing rank raises :class:`RankFailure` carrying that rank's own traceback (not the
  launcher's noise);
* a wall-clock ``timeout`` kills the whole process group and raises :class:`RankTimeout`;
* nothing survives the call: the launcher runs in its own session, which is always killed;
* every call gets a fresh free port, so parallel or consecutive calls never collide;
* DeepSpeed's ``/dev/shm`` buffers of that port are removed afterwards, even when ranks were killed.

Typical use in a test::

    def _body(scale):                     # module-level, importable by the ranks
        import torch.distributed as dist
        t = torch.ones(1) * dist.get_rank() * scale
        dist.all_reduce(t)
        return t.item()

    assert run_on_ranks(_body, nprocs=2, scale=2.0) == [2.0, 2.0]
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adaptive_lm_ds
from adaptive_lm_ds.ds_runtime import remove_shm_buffers
from adaptive_lm_ds.launch import LOOPBACK, free_port

# The folder this package was imported from: put first on the ranks' PYTHONPATH when it is a checkout, so that
# they import the same package (an installed one they find anyway). Ranks start in the caller's directory.
PACKAGE_PARENT = Path(adaptive_lm_ds.__file__).resolve().parents[1]
IMPORT_PATH = "" if any(PACKAGE_PARENT == Path(p).resolve() for p in site.getsitepackages()) else str(PACKAGE_PARENT)
LAUNCHERS = ("torchrun", "deepspeed")


class RankFailure(RuntimeError):
    """A rank raised or exited non-zero; the message holds that rank's traceback."""

    def __init__(self, rank: int | None, detail: str):
        self.rank = rank
        where = f"rank {rank}" if rank is not None else "the launcher"
        super().__init__(f"{where} failed:\n{detail}")


class RankTimeout(RuntimeError):
    """The ranks did not finish within the timeout; all of them were killed."""


def rank_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for CPU ranks: gloo-friendly, one thread per rank, this package importable."""
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS=env.get("ADAPTIVE_LM_RANK_THREADS", "1"),
        PYTHONPATH=os.pathsep.join(p for p in (IMPORT_PATH, env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
        MASTER_ADDR=LOOPBACK,
        TORCH_CPP_LOG_LEVEL="ERROR",
    )
    env.update(extra or {})
    return env


def launcher_argv(launcher: str, nprocs: int, port: int, *, nnodes: int = 1, node_rank: int = 0) -> list[str]:
    """The launcher's own command line (before the module/script it starts)."""
    bindir = Path(sys.executable).parent
    if launcher == "torchrun":
        return [
            str(bindir / "torchrun"),
            f"--nproc_per_node={nprocs}",
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--master_addr={LOOPBACK}",
            f"--master_port={port}",
        ]
    if launcher == "deepspeed":
        if nnodes != 1:
            raise ValueError("the deepspeed launcher is simulated on one node only; use torchrun")
        return [str(bindir / "deepspeed"), "--num_gpus", str(nprocs), "--master_port", str(port)]
    raise ValueError(f"unknown launcher {launcher!r}; choose one of {LAUNCHERS}")


@dataclass
class LaunchResult:
    returncode: int
    output: str


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher, its process group and every descendant, wherever their session."""
    victims = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def launch(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    shm_job: tuple[int, int] | None = None,
) -> LaunchResult:
    """Run ``argv`` in a new session; on timeout (or any exit) kill the whole session.

    ``shm_job=(port, nprocs)``: afterwards remove the ``/dev/shm`` buffers DeepSpeed made for that job.
    """
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else rank_env(),
            cwd=str(cwd or Path.cwd()),
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            log.seek(0)
            raise RankTimeout(
                f"{' '.join(argv[:3])} ... did not finish in {timeout:.0f}s; every rank was killed.\n"
                f"--- output tail ---\n{log.read()[-4000:]}"
            ) from None
        finally:
            _kill_tree(proc)  # launchers may leave children behind when a rank dies
            if shm_job is not None:
                remove_shm_buffers(LOOPBACK, *shm_job)
        log.seek(0)
        return LaunchResult(proc.returncode, log.read())


def run_script(
    script: str | Path,
    args: Sequence[str] = (),
    *,
    nprocs: int = 2,
    launcher: str = "torchrun",
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> LaunchResult:
    """Launch a user-facing script on ``nprocs`` CPU ranks; raise with its output if it fails."""
    port = free_port()
    argv = launcher_argv(launcher, nprocs, port) + [str(script), *map(str, args)]
    result = launch(argv, timeout=timeout, env=rank_env(env), shm_job=(port, nprocs))
    if result.returncode != 0:
        raise RankFailure(None, f"exit code {result.returncode}\n{result.output[-6000:]}")
    return result


def run_script_multinode(
    script: str | Path,
    args: Sequence[str] = (),
    *,
    nnodes: int = 2,
    nproc_per_node: int = 2,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> list[LaunchResult]:
    """Simulate ``nnodes`` machines on loopback: one ``torchrun --nnodes N --node_rank r`` per node,
    all meeting at one master port, as a multi-node job does. Returns each node's output;
    raises :class:`RankFailure` naming the node that failed."""
    port = free_port()
    procs = []
    logs = []
    for node in range(nnodes):
        log = tempfile.TemporaryFile(mode="w+")
        argv = launcher_argv("torchrun", nproc_per_node, port, nnodes=nnodes, node_rank=node)
        procs.append(
            subprocess.Popen(
                argv + [str(script), *map(str, args)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=rank_env(env),
                cwd=str(Path.cwd()),
                start_new_session=True,
            )  # fmt: skip
        )
        logs.append(log)
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        raise RankTimeout(f"the {nnodes}-node job did not finish in {timeout:.0f}s; every rank was killed") from None
    finally:
        for proc in procs:
            _kill_tree(proc)
    results = []
    for node, (proc, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        results.append(LaunchResult(proc.returncode, log.read()))
        log.close()
        if proc.returncode != 0:
            raise RankFailure(None, f"node {node} exited with {proc.returncode}\n{results[-1].output[-6000:]}")
    return results


def _watch(
    argv: list[str], env: dict[str, str] | None, timeout: float, on_line: Callable[[subprocess.Popen, str], bool]
) -> tuple[list[str], bool, int | None]:
    """Run ``argv`` in a new session, feeding each output line to ``on_line`` until it returns True or the
    output ends; then kill everything left. Returns (lines, timed out, exit code or None if killed early)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env=rank_env(env), cwd=str(Path.cwd()), start_new_session=True,
    )  # fmt: skip
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_tree(proc)

    timer = threading.Timer(timeout, on_timeout)
    timer.start()
    lines: list[str] = []
    returncode = None
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line(proc, line):
                break
        else:
            returncode = proc.wait()
    finally:
        timer.cancel()
        _kill_tree(proc)
    return lines, timed_out.is_set(), returncode


def run_script_until_killed(
    script: str | Path,
    args: Sequence[str],
    kill_when: str,
    *,
    nprocs: int = 2,
    launcher: str = "torchrun",
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> str:
    """Launch ``script`` and SIGKILL every process of it as soon as a line containing ``kill_when``
    is printed (simulates a crash or a pre-empted node). Returns the output up to the kill; raises
    :class:`RankFailure` if the script ended first, :class:`RankTimeout` if the line never came.
    """
    port = free_port()
    argv = launcher_argv(launcher, nprocs, port) + [str(script), *map(str, args)]
    try:
        lines, timed_out, returncode = _watch(argv, env, timeout, lambda _proc, line: kill_when in line)
    finally:
        remove_shm_buffers(LOOPBACK, port, nprocs)
    if returncode is None and not timed_out:
        return "".join(lines)
    tail = "".join(lines)[-4000:]
    if timed_out:
        raise RankTimeout(f"{kill_when!r} did not appear within {timeout:.0f}s\n{tail}")
    raise RankFailure(None, f"the script ended before printing {kill_when!r}\n{tail}")


def run_script_signalled(
    script: str | Path,
    args: Sequence[str],
    signal_when: str,
    sig: int = signal.SIGTERM,
    *,
    nprocs: int = 1,
    launcher: str | None = "torchrun",
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> LaunchResult:
    """Launch ``script`` (``launcher=None``: one plain ``python`` process), send ``sig`` to the launcher
    process alone (as a scheduler or Ctrl-C does) once a line containing ``signal_when`` is printed,
    and wait for it to exit. Returns the whole output and the exit code; :class:`RankTimeout` if the
    line or the exit never came (everything is killed then).
    """
    port = free_port()
    if launcher is None:
        argv = [sys.executable, str(script), *map(str, args)]
        env = {**(env or {}), "MASTER_PORT": str(port)}
    else:
        argv = launcher_argv(launcher, nprocs, port) + [str(script), *map(str, args)]
    sent = []

    def signal_once(proc: subprocess.Popen, line: str) -> bool:
        if not sent and signal_when in line:
            proc.send_signal(sig)
            sent.append(sig)
        return False  # read on until the run exits

    lines, timed_out, returncode = _watch(argv, env, timeout, signal_once)
    if timed_out or not sent or returncode is None:
        tail = "".join(lines)[-4000:]
        raise RankTimeout(f"{signal_when!r} never appeared or the run did not exit in {timeout:.0f}s\n{tail}")
    return LaunchResult(returncode, "".join(lines))


def run_on_ranks(
    fn: Callable[..., Any],
    nprocs: int = 2,
    *,
    launcher: str = "torchrun",
    timeout: float = 180,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Call ``fn(**kwargs)`` on ``nprocs`` ranks (process group already initialised, gloo).

    ``fn`` must be a module-level function; ``kwargs`` and the return values must pickle.
    Returns the list of per-rank return values. Raises :class:`RankFailure` with the traceback
    of the first rank that failed, or :class:`RankTimeout`.
    """
    target = f"{fn.__module__}:{fn.__qualname__}"
    if "<locals>" in target or fn.__module__ == "__main__":
        raise ValueError(f"{target} is not importable by the ranks; define it at module level")
    workdir = Path(tempfile.mkdtemp(prefix="ranks-"))
    try:
        with open(workdir / "kwargs.pkl", "wb") as f:
            pickle.dump(kwargs, f)
        port = free_port()
        argv = launcher_argv(launcher, nprocs, port)
        worker = ["-m", "adaptive_lm_ds.testing._worker"]
        if launcher == "deepspeed":
            worker = ["--module", "adaptive_lm_ds.testing._worker"]
            argv = argv + ["--no_local_rank"]
        argv = argv + worker + [target, str(workdir)]
        start = time.monotonic()
        result = launch(argv, timeout=timeout, env=rank_env(env), shm_job=(port, nprocs))
        # The first traceback written is the cause; peers that died in a collective come after.
        errors = sorted(workdir.glob("rank*.err"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        if errors:
            first = errors[0]
            raise RankFailure(int(first.stem[4:]), first.read_text())
        outputs = []
        for rank in range(nprocs):
            out = workdir / f"rank{rank}.pkl"
            if not out.exists():
                raise RankFailure(
                    rank,
                    f"no result (launcher exit code {result.returncode} after "
                    f"{time.monotonic() - start:.0f}s)\n{result.output[-4000:]}",
                )
            with open(out, "rb") as f:
                outputs.append(pickle.load(f))
        return outputs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
