"""DeepSpeed's CPU runtime kept inside this checkout's venv, and cleaned up after every run.

Three things DeepSpeed does on every start, and what we do about them:

* **The ``deepspeed_shm_comm`` C++ op is JIT-compiled** (``ShareMemCommBuilder``, loaded by
  ``deepspeed/comm/torch.py:build_shm_op``) into ``TORCH_EXTENSIONS_DIR``, by default
  ``~/.cache/torch_extensions``, which every venv of the user shares: two checkouts rebuild it in turn.
  :func:`configure_environment` (run by every program's start-up, ``cli.start_up``, and inherited by the
  ranks it launches; again by :func:`load_shm_op`) points ``TORCH_EXTENSIONS_DIR`` into the venv;
  ``make venv`` builds the op there once (:func:`main`, ``adaptive-lm-build-ops``; ``make ds-ops`` again).
* **A build killed half-way leaves ``DIR/deepspeed_shm_comm/lock``**, and torch's ``FileBaton`` then
  waits for it forever, without a word. Our processes build and load the op only while holding an
  ``flock`` on ``DIR/.build.lock`` (:func:`load_shm_op`); the kernel drops an ``flock`` when its
  holder dies, so a torch ``lock`` file seen while holding ours belongs to nobody:
  :class:`StaleBuildLock` names it and says to delete it, instead of hanging.
* **Each rank maps a 69 MB ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``**
  (``shm.cpp:shm_initialize``, only when ``LOCAL_SIZE`` equals the world size, as under the
  ``deepspeed`` launcher) and DeepSpeed never removes it. Every peer maps every buffer during
  ``init_distributed``; after a barrier each rank unlinks its *own* name
  (:func:`release_shm_buffer`). The mappings stay valid until the processes exit, so the run works
  as before and nothing is left in ``/dev/shm`` however it ends (even SIGKILL). Only names built from
  this run's uid, ``MASTER_ADDR``, ``MASTER_PORT`` and rank are touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adaptive_lm_ds import deepspeed_compat
from adaptive_lm_ds.errors import UserError

SHM_OP = "deepspeed_shm_comm"
SHM_DIR = Path("/dev/shm")
ENV = "TORCH_EXTENSIONS_DIR"
OVERRIDE = "ADAPTIVE_LM_TORCH_EXTENSIONS_DIR"
GRACE_S = 5.0  # how long a torch lock may be held by a process that is only loading the built op


class StaleBuildLock(UserError, RuntimeError):
    """A torch build lock left by a killed process; the message names the file to delete."""


def extensions_dir() -> Path:
    """Where this checkout's compiled ops live: inside the venv (``build/`` of the checkout without one),
    or ``$ADAPTIVE_LM_TORCH_EXTENSIONS_DIR`` when set.

    One sub-folder per spelling of the interpreter's prefix: torch writes the absolute source paths
    into ``build.ninja``, so a venv reached through a symlink and through its real path would otherwise
    rebuild the op in turn (the ``deepspeed`` and ``torchrun`` scripts start ranks through the real path).
    """
    if os.environ.get(OVERRIDE):
        return Path(os.environ[OVERRIDE]).resolve()
    if sys.prefix != sys.base_prefix:
        root = Path(sys.prefix).resolve() / "torch_extensions"
    else:
        root = Path(__file__).resolve().parents[1] / "build" / "torch_extensions"
    return root / hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]


def configure_environment() -> None:
    """Point torch's extension builds (DeepSpeed's JIT ops) at :func:`extensions_dir`, never ``~/.cache``."""
    os.environ[ENV] = str(extensions_dir())


def default_environment() -> None:
    """:func:`configure_environment` unless the caller chose a ``TORCH_EXTENSIONS_DIR``: what the library
    does when it starts DeepSpeed itself (a notebook using ``LanguageModel.load``), not on import."""
    if ENV not in os.environ:
        configure_environment()


@contextmanager
def _build_lock() -> Iterator[None]:
    """Exclusive ``flock`` on ``DIR/.build.lock``: one of our processes builds or loads the op at a time."""
    root = extensions_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process building DeepSpeed ops in {root} ...", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _raise_if_stale(grace_s: float) -> None:
    """Call holding :func:`_build_lock`. A torch ``lock`` that outlives ``grace_s`` belongs to nobody: our
    builders hold our lock, and a foreign process loading the built op holds torch's for well under a second."""
    lock = extensions_dir() / SHM_OP / "lock"
    deadline = time.monotonic() + grace_s
    while lock.exists():
        if time.monotonic() >= deadline:
            raise StaleBuildLock(
                f"{lock} was left by a build of DeepSpeed's {SHM_OP} op that was killed and would make every "
                f"start wait forever; no build is running: delete it (rm {lock}) and start again"
            )
        time.sleep(0.1)


def check_stale_lock(grace_s: float = GRACE_S) -> None:
    """Raise :class:`StaleBuildLock` when torch's lock for the op exists while nobody builds it."""
    with _build_lock():
        _raise_if_stale(grace_s)


def load_shm_op(grace_s: float = GRACE_S):
    """Build (first time) and load DeepSpeed's shared-memory op under our lock; ``None`` where it does not apply.

    DeepSpeed caches the loaded module, so its own ``build_shm_op`` in ``init_distributed`` reuses it.
    """
    configure_environment()
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    with _build_lock():
        _raise_if_stale(grace_s)
        return builder.load(verbose=False)


def shm_buffer_path(rank: int, addr: str | None = None, port: str | int | None = None) -> Path:
    """The ``/dev/shm`` file DeepSpeed's ``shm_initialize`` creates for ``rank`` of the job at addr:port."""
    addr = os.environ.get("MASTER_ADDR", "") if addr is None else addr
    port = os.environ.get("MASTER_PORT", "") if port is None else port
    return SHM_DIR / deepspeed_compat.shm_buffer_name(rank, addr, port)


def release_shm_buffer() -> None:
    """After ``deepspeed.init_distributed`` on every rank: unlink this rank's buffer name (mappings stay)."""
    import torch.distributed as dist

    if not dist.is_initialized() or not deepspeed_compat.makes_shm_buffer(dist.get_world_size()):
        return
    dist.barrier()  # every peer has opened and mapped every buffer by now
    shm_buffer_path(dist.get_rank()).unlink(missing_ok=True)


def remove_shm_buffers(addr: str, port: int, nprocs: int) -> list[Path]:
    """Unlink the buffers of the job at ``addr:port`` with ranks ``0..nprocs-1`` (a launcher's clean-up after
    it killed its ranks); returns what it removed."""
    removed = []
    for rank in range(nprocs):
        path = shm_buffer_path(rank, addr, port)
        if path.exists():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> int:
    """Build the op into the venv now (``make venv`` and ``make ds-ops`` run it; it takes no arguments)."""
    from adaptive_lm_ds import cli

    cli.parser(main.__doc__).parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    op = load_shm_op()
    where = extensions_dir() / SHM_OP
    print(f"{SHM_OP}: {'built in ' + str(where) if op is not None else 'not used on this accelerator'}")
    return 0
