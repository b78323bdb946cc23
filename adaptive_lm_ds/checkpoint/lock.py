"""One run per ``--save-dir``: ``SAVE_DIR/.lock`` is a lease that its owner renews while it runs.

Two runs writing into one folder interleave their checkpoints, so the second run is refused with one
line saying who holds the folder. Whether the holder is still alive is decided without trusting PIDs
across machines or containers (a PID means nothing in another PID namespace, and a reused PID looks
alive forever):

* the owner renews the lease every ``lease_s / 4`` seconds from a background thread; a lock whose
  lease ran out (``renewed + lease_s`` in the past) belongs to a run that is gone, on any host, and is
  **taken over** with a one-line warning;
* only where a PID provably means the same process -- same kernel boot (``boot_id``) and same PID
  namespace -- a dead PID, or a live one that started at another time (reused), ends the lease early,
  so a requeued job on the same node does not wait;
* anything else (a live lease, a lock written by an older version without a lease) is refused, and the
  message says when the lease runs out and which file to delete if that run is gone.

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ filesystems) and removed
when the run ends; the trainer calls :meth:`SaveDirLock.check_owned` before every save and every
prune, so a run whose lock was taken over (it stalled past its lease) stops instead of writing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from adaptive_lm_ds.checkpoint.errors import CheckpointError

LOCK = ".lock"
LEASE_S = 60.0


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The start time (clock ticks since boot) of ``pid`` in this PID namespace; "" when it does not exist."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""  # field 22 of proc(5); the 3rd after the command name


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: str  # UTC, ISO 8601
    boot_id: str
    pid_namespace: str
    process_start: str
    token: str  # this run's identity: the lock is ours exactly when it carries our token
    renewed: float  # wall-clock seconds (time.time()) of the last renewal
    lease_s: float

    @classmethod
    def me(cls, lease_s: float) -> LockOwner:
        now = time.time()
        pid = os.getpid()
        return cls(
            socket.gethostname(), pid, utc(now), boot_id(), pid_namespace(), process_start(pid),
            uuid.uuid4().hex, now, lease_s,
        )  # fmt: skip

    def expires(self) -> float:
        return self.renewed + self.lease_s

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def gone_because(self, now: float) -> str | None:
        """Why this owner is certainly gone, or None when it may be running."""
        if now > self.expires():
            return f"its lease expired at {utc(self.expires())}"
        here = boot_id(), pid_namespace()
        if self.boot_id and self.pid_namespace and (self.boot_id, self.pid_namespace) == here:
            start = process_start(self.pid)  # same kernel, same PID namespace: the PID means that process
            if start != self.process_start:
                return "its process has exited"
        return None


def read_owner(save_dir: str | Path) -> LockOwner | None:
    path = Path(save_dir) / LOCK
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); if no run uses {save_dir}, delete {path}") from None
    try:
        return LockOwner(**raw)
    except TypeError:
        where = f"host {raw.get('host')}, pid {raw.get('pid')}" if isinstance(raw, dict) else "unknown"
        raise CheckpointError(
            f"--save-dir {save_dir} is locked by a run without a lease ({where}; an older version); "
            f"if that run is gone, delete {path}"
        ) from None


class SaveDirLock:
    """``acquire()`` on one rank (rank 0) before the first write; ``release()`` when the run ends."""

    def __init__(self, save_dir: str | Path, lease_s: float = LEASE_S):
        self.path = Path(save_dir) / LOCK
        self.lease_s = lease_s
        self.owner: LockOwner | None = None
        self.took_over: LockOwner | None = None
        self.took_over_because: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _create(self, me: LockOwner) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(me)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _take_over(self, other: LockOwner, me: LockOwner) -> bool:
        """Move ``other``'s lock aside and create ours; False when someone renewed or took it first."""
        stale = self.path.with_name(f"{LOCK}.stale{os.getpid()}")
        try:
            os.replace(self.path, stale)
            moved = LockOwner(**json.loads(stale.read_text()))
        except (OSError, ValueError, TypeError):
            moved = None
        if moved is not None and moved != other:  # renewed or taken over meanwhile: give it back
            os.replace(stale, self.path)
            return False
        stale.unlink(missing_ok=True)
        return moved == other and self._create(me)

    def acquire(self) -> SaveDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = LockOwner.me(self.lease_s)
        for _ in range(3):  # a lock released or taken over between our looks: look again
            if self._create(me):
                return self._owned(me)
            other = read_owner(self.path.parent)
            if other is None:
                continue
            reason = other.gone_because(time.time())
            if reason is None:
                break
            if self._take_over(other, me):
                self.took_over, self.took_over_because = other, reason
                return self._owned(me)
        other = read_owner(self.path.parent) or other
        raise CheckpointError(
            f"--save-dir {self.path.parent} is in use by another run ({other.describe()}; its lease runs until "
            f"{utc(other.expires())}); use another --save-dir, or if that run is gone, rerun after the lease "
            f"ends or delete {self.path}"
        )

    def _owned(self, me: LockOwner) -> SaveDirLock:
        self.owner = me
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="save-dir-lease", daemon=True)
        self._renewer.start()
        return self

    def renew(self) -> bool:
        """Extend our lease (a temp file renamed over the lock); False when the lock is no longer ours."""
        if self.owner is None or read_owner(self.path.parent) != self.owner:
            return False
        renewed = replace(self.owner, renewed=time.time())
        tmp = self.path.with_name(f"{LOCK}.renew{os.getpid()}")
        tmp.write_text(json.dumps(asdict(renewed)) + "\n")
        os.replace(tmp, self.path)
        self.owner = renewed
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                if not self.renew():
                    return
            except (OSError, CheckpointError):
                continue  # a transient error: the next round tries again; check_owned decides before saves

    def check_owned(self) -> None:
        """Raise CheckpointError unless the lock still carries our token (called before saves and prunes)."""
        try:
            holder = read_owner(self.path.parent)
        except CheckpointError:
            holder = None
        if self.owner is None or holder is None or holder.token != self.owner.token:
            who = f" by another run ({holder.describe()})" if holder is not None else ""
            raise CheckpointError(
                f"this run no longer holds {self.path} (taken over{who} or removed); stopping without writing "
                f"to --save-dir {self.path.parent} so two runs never write one folder"
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        try:
            holder = read_owner(self.path.parent)
        except CheckpointError:
            holder = None
        if self.owner is not None and holder is not None and holder.token == self.owner.token:
            self.path.unlink(missing_ok=True)
        self.owner = None
