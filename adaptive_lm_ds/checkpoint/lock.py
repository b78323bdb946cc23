"""One run per ``--save-dir``: ``SAVE_DIR/.lock`` records who owns it (host, pid, start time).

Two runs writing into one folder interleave their checkpoints, so the second run is refused with one
line saying who holds the folder. A lock whose owner is gone is handled by what we can know:

* same host, pid no longer alive (a killed job): the lock is stale; it is **taken over** with a
  one-line warning naming the dead owner, so a requeued job resumes without a manual step;
* another host: we cannot see its processes; the run is refused and the message says to delete the
  lock file if that run is gone.

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ filesystems) and removed
when the run ends, however it ends short of SIGKILL (then the next run on this host takes it over).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptive_lm_ds.checkpoint.errors import CheckpointError

LOCK = ".lock"


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: str  # UTC, ISO 8601

    @classmethod
    def me(cls) -> LockOwner:
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(save_dir: str | Path) -> LockOwner | None:
    path = Path(save_dir) / LOCK
    try:
        return LockOwner(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); if no run uses {save_dir}, delete {path}") from None


class SaveDirLock:
    """``acquire()`` on one rank (rank 0) before the first write; ``release()`` when the run ends."""

    def __init__(self, save_dir: str | Path):
        self.path = Path(save_dir) / LOCK
        self.owner: LockOwner | None = None
        self.took_over: LockOwner | None = None

    def _create(self, me: LockOwner) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(me)) + "\n")
        return True

    def acquire(self) -> SaveDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = LockOwner.me()
        if self._create(me):
            self.owner = me
            return self
        other = read_owner(self.path.parent)
        if other is None:  # released between our two looks
            return self.acquire()
        if other.host == me.host and not _alive(other.pid):
            stale = self.path.with_name(f"{LOCK}.stale{os.getpid()}")
            try:
                os.replace(self.path, stale)
                moved = LockOwner(**json.loads(stale.read_text()))
            except (OSError, ValueError, TypeError):
                moved = None
            if moved is not None and moved != other:  # another run took it over first: give its lock back
                os.replace(stale, self.path)
            else:
                stale.unlink(missing_ok=True)
            if moved == other and self._create(me):
                self.owner, self.took_over = me, other
                return self
            other = read_owner(self.path.parent) or other
        where = "this host" if other.host == me.host else f"host {other.host}"
        raise CheckpointError(
            f"--save-dir {self.path.parent} is in use by another run ({other.describe()}); use another --save-dir, "
            f"or if that run on {where} is gone, delete {self.path}"
        )

    def release(self) -> None:
        if self.owner is not None and read_owner(self.path.parent) == self.owner:
            self.path.unlink(missing_ok=True)
        self.owner = None
