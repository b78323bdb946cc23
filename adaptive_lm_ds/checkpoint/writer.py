"""The one checkpoint writer (training and the layout converter): DeepSpeed's files, RNG, record, commit.

All ranks call :func:`save_checkpoint`. A write error on any rank (a full disk, a read-only folder)
is collected without raising inside DeepSpeed's collectives, agreed on by every rank, the partial tag
folder is removed (we wrote it), and one :class:`CheckpointError` line names the disk, its free space
and the last good checkpoint -- which is untouched, since ``latest`` moves only after a commit.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from adaptive_lm_ds.checkpoint import durable, folders
from adaptive_lm_ds.checkpoint.agreement import decided_on_rank0
from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.checkpoint.record import STATE_FILE, CheckpointRecord
from adaptive_lm_ds.checkpoint.safe_files import SafeCheckpointEngine, install
from adaptive_lm_ds.errors import raised_on_every_rank


def mount_point(path: str | Path) -> Path:
    """The mount point (the disk) holding ``path`` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    while not path.is_mount():
        path = path.parent
    return path


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def what_failed(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "no space left on device"
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def describe_write_failure(save_dir: str | Path, tag: str, what: str) -> str:
    disk = mount_point(save_dir)
    free = shutil.disk_usage(disk).free
    last = folders.complete_tags(save_dir)
    last_good = str(Path(save_dir) / last[0]) if last else "none (no checkpoint was saved yet)"
    return (
        f"cannot write checkpoint {Path(save_dir) / tag} ({what}); disk {disk} has {human_bytes(free)} free; "
        f"the last good checkpoint is {last_good}; free space or use another --save-dir, then rerun to resume"
    )


def _any_rank(flag: bool, device) -> bool:
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def save_checkpoint(
    engine,
    save_dir: str | Path,
    record: CheckpointRecord,
    *,
    dictionary=None,
    keep_last_n: int = -1,
    still_owner: Callable[[], None] | None = None,
) -> str:
    """Save ``record``'s checkpoint as ``SAVE_DIR/checkpoint_N`` on every rank; returns the tag.

    A complete ``checkpoint_N`` already there is never overwritten (every rank raises the same
    CheckpointError); ``still_owner()`` (rank 0) raises unless this run still holds the save-dir lock.
    """
    save_dir = Path(save_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = folders.tag_for(record.num_updates)

    def may_write() -> bool:  # rank 0 decides; whether the tag folder existed (ours to remove on failure)
        if still_owner is not None:
            still_owner()
        if folders.is_complete(save_dir, tag):
            raise CheckpointError(
                f"{save_dir / tag} is a complete checkpoint this run did not write; refusing to overwrite it "
                f"(move it out of {save_dir} or use another --save-dir)"
            )
        return (save_dir / tag).exists()

    existed = decided_on_rank0(may_write)
    safe = engine.checkpoint_engine if isinstance(engine.checkpoint_engine, SafeCheckpointEngine) else install(engine)
    safe.failure = None
    error: BaseException | None = None
    try:
        engine.save_checkpoint(str(save_dir), tag=tag, save_latest=False)
        error = safe.failure
        if error is None:
            folders.save_rng(save_dir, tag, rank)
            if rank == 0:  # everything an offline export needs, beside DeepSpeed's files
                durable.atomic_write(save_dir / tag / STATE_FILE, record.to_json())
                if dictionary is not None:
                    dictionary.save(save_dir / tag / "dict.txt")
    except (OSError, RuntimeError) as e:
        error = e
    if _any_rank(error is not None, engine.device):
        causes = [what_failed(error) if error is not None else None]
        if dist.is_initialized():  # every rank reports the failing rank's cause (rank 0 prints it)
            causes = [None] * dist.get_world_size()
            dist.all_gather_object(causes, what_failed(error) if error is not None else None)
        culprit = next(i for i, c in enumerate(causes) if c is not None)
        where = f" on rank {culprit}" if len(causes) > 1 else ""
        message = describe_write_failure(save_dir, tag, f"{causes[culprit]}{where}")
        if rank == 0 and not existed:
            shutil.rmtree(save_dir / tag, ignore_errors=True)
        raise raised_on_every_rank(CheckpointError(message))  # every rank gathered the same cause
    folders.commit_checkpoint(
        save_dir, tag, keep_last_n, still_owner=still_owner,
        describe_os_error=lambda e: describe_write_failure(save_dir, tag, what_failed(e)),
    )  # fmt: skip
    return tag
