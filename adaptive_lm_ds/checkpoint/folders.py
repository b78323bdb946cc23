"""Checkpoint folders around DeepSpeed's save/load: tags, ``latest``, pruning, RNG, resume resolution.

DeepSpeed writes the model, optimizer and scheduler state of every rank under ``SAVE_DIR/TAG/``. What
we add:

* ``latest`` is updated only after **every** rank finished writing, the checksum manifest is written
  and a ``.complete`` marker is in the tag folder, by an atomic rename: a save killed half-way never
  becomes the resume point;
* on resume from ``latest`` every file is checked against the manifest (rank 0 checks and decides,
  every rank learns its answer); a damaged newest checkpoint is skipped with a one-line warning for
  the newest intact one (an explicit ``--restore-file`` that is damaged is an error: the user asked
  for that one);
* a rollback (resuming from a checkpoint older than the save dir's newest) moves the newer
  checkpoints, which belong to the abandoned run, into ``abandoned/`` (:func:`move_newer_aside`): the
  new run never overwrites, prunes or falls back to them, and nothing is deleted;
* the RNG states of every rank (torch CPU/CUDA and the model-parallel tracker) in
  ``TAG/rng_rank{R}.pt``, so a resumed run draws the same dropout masks as an uninterrupted one;
* ``--keep-last-n`` pruning of older update checkpoints (only folders named ``checkpoint_N``, only
  older than the one just saved, so only this run's line of checkpoints);
* every file, marker and ``latest`` is fsynced before the rename that publishes it (:mod:`durable`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from adaptive_lm_ds.checkpoint import durable, integrity
from adaptive_lm_ds.checkpoint.agreement import decided_on_rank0
from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.checkpoint.safe_files import load_file

LATEST = "latest"
COMPLETE = ".complete"
ABANDONED = "abandoned"
TAG_RE = re.compile(r"^checkpoint_(\d+)$")

LOG = logging.getLogger("adaptive_lm_ds.checkpoint")


def tag_for(num_updates: int) -> str:
    return f"checkpoint_{num_updates}"


def is_complete(save_dir: str | Path, tag: str) -> bool:
    return (Path(save_dir) / tag / COMPLETE).is_file()


def read_latest(save_dir: str | Path) -> str | None:
    """The tag ``latest`` names, checked to be complete; None when the folder has no checkpoint."""
    path = Path(save_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not tag or not is_complete(save_dir, tag):
        raise CheckpointError(
            f"{path} names {tag!r}, which is not a complete checkpoint; remove {path} to start over "
            f"or point --restore-file at a complete one"
        )
    return tag


def complete_tags(save_dir: str | Path) -> list[str]:
    """Complete update checkpoints of ``save_dir``, newest first."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    numbered = [
        (int(m.group(1)), p.name) for p in root.iterdir() if (m := TAG_RE.match(p.name)) and is_complete(root, p.name)
    ]
    return [name for _, name in sorted(numbered, reverse=True)]


def warn(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        LOG.warning(message)


def verify_tag(tag_dir: Path) -> None:
    """Checksums of one tag folder; a CheckpointError names the damaged file (or the missing manifest)."""
    integrity.verify(tag_dir)


def newest_intact(save_dir: str | Path) -> str | None:
    """``latest``'s tag when intact, else the newest intact complete tag (one warning per skipped one)."""
    latest = read_latest(save_dir)
    if latest is None:
        return None
    candidates = [latest] + [t for t in complete_tags(save_dir) if t != latest]
    first_error = None
    for tag in candidates:
        try:
            verify_tag(Path(save_dir) / tag)
        except CheckpointError as e:
            first_error = first_error or e
            warn(f"skipping {tag}: {e}")
            continue
        if tag != latest:
            warn(f"resuming from {tag}, the newest intact checkpoint, instead of {latest}")
        return tag
    raise CheckpointError(f"cannot load checkpoint: no intact checkpoint in {save_dir} ({first_error})")


def resolve_restore(save_dir: str | Path, restore_file: str) -> tuple[Path, str] | None:
    """(folder, tag) to load, verified on rank 0 and the same on every rank; or None to start fresh
    (fairseq's rule for checkpoint_last)."""
    return decided_on_rank0(lambda: find_restore(save_dir, restore_file))


def find_restore(save_dir: str | Path, restore_file: str) -> tuple[Path, str] | None:
    """:func:`resolve_restore` on this rank alone (inside a decision already made on rank 0)."""
    if restore_file in ("", "checkpoint_last"):
        tag = newest_intact(save_dir)
        return (Path(save_dir), tag) if tag else None
    candidate = Path(restore_file)
    if candidate.is_dir() and (candidate / COMPLETE).is_file():
        found = candidate.parent, candidate.name
    elif is_complete(save_dir, restore_file):
        found = Path(save_dir), restore_file
    else:
        raise CheckpointError(
            f"--restore-file {restore_file}: no complete checkpoint there (looked in {candidate} and "
            f"{Path(save_dir) / restore_file}); pass a tag folder that has a {COMPLETE} marker"
        )
    try:
        verify_tag(found[0] / found[1])
    except CheckpointError as e:
        raise CheckpointError(f"cannot load checkpoint {found[0] / found[1]}: {e}") from None
    return found


def commit_checkpoint(
    save_dir: str | Path,
    tag: str,
    keep_last_n: int,
    *,
    still_owner: Callable[[], None] | None = None,
    describe_os_error: Callable[[OSError], str] | None = None,
) -> None:
    """After every rank saved: checksum (and fsync) the files, mark ``tag`` complete, point ``latest`` at
    it, prune -- on rank 0; any failure there (a write, the save-dir lock lost, pruning) is raised as the
    same CheckpointError on every rank.

    ``still_owner()`` raises unless this run still holds the save-dir lock (checked before the commit
    and again before pruning); ``describe_os_error`` words a write failure.
    """
    if dist.is_initialized():
        dist.barrier()

    def commit() -> None:
        root = Path(save_dir)
        if still_owner is not None:
            still_owner()
        integrity.write_manifest(root / tag)
        durable.atomic_write(root / tag / COMPLETE, "ok\n")
        durable.atomic_write(root / LATEST, tag + "\n")
        if keep_last_n >= 0:
            if still_owner is not None:
                still_owner()
            try:
                prune(root, keep_last_n, newest=tag)
            except OSError as e:
                raise CheckpointError(
                    f"saved {root / tag}, but pruning older checkpoints failed ({type(e).__name__}: {e}); "
                    f"free or fix {root}, then rerun to resume"
                ) from None

    decided_on_rank0(commit, describe_os_error)


def prune(save_dir: Path, keep_last_n: int, newest: str) -> list[str]:
    """Delete update checkpoints older than ``newest`` beyond the newest ``keep_last_n`` (never ``newest``).

    Only numbers below ``newest``'s: a later folder is not this run's (a rollback moves those aside
    first, :func:`move_newer_aside`), so pruning never deletes it. A failure raises :class:`OSError`.
    """
    limit = int(TAG_RE.match(newest).group(1))
    numbered = sorted(
        (n, p.name)
        for p in save_dir.iterdir()
        if p.is_dir() and (m := TAG_RE.match(p.name)) and (n := int(m.group(1))) <= limit
    )
    doomed = [name for _, name in numbered[: max(0, len(numbered) - max(keep_last_n, 1))] if name != newest]
    for name in doomed:
        shutil.rmtree(save_dir / name)
    if doomed:
        durable.fsync_dir(save_dir)
    return doomed


def move_newer_aside(save_dir: str | Path, resumed_at: int) -> Path | None:
    """Move every ``checkpoint_N`` with N > ``resumed_at`` (complete or not) into
    ``SAVE_DIR/abandoned/after_checkpoint_{resumed_at}_{UTC time}/``; returns that folder (None: nothing
    newer). ``latest`` is pointed back at the newest complete checkpoint left (removed when none is).

    Called on rank 0 after a resume (or a fresh start) and before the first save: a rollback
    (``--restore-file checkpoint_4`` in a save dir holding checkpoint_6) would otherwise overwrite the
    abandoned run's checkpoint_5, prune the one resumed from and leave checkpoint_6 for a later
    fallback to pick up as if this run had written it.
    """
    root = Path(save_dir)
    if not root.is_dir():
        return None
    tags = ((int(m.group(1)), p.name) for p in root.iterdir() if (m := TAG_RE.match(p.name)))
    newer = sorted(tag for tag in tags if tag[0] > resumed_at)
    if not newer:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = root / ABANDONED / f"after_{tag_for(resumed_at)}_{stamp}"
    target.mkdir(parents=True, exist_ok=False)
    for _, name in newer:
        os.replace(root / name, target / name)
    durable.fsync_dir(target)
    durable.fsync_dir(root)
    left = complete_tags(root)
    if left:
        durable.atomic_write(root / LATEST, left[0] + "\n")
    elif (root / LATEST).exists():
        (root / LATEST).unlink()
        durable.fsync_dir(root)
    return target


def set_aside_newer(save_dir: str | Path, resumed_at: int) -> Path | None:
    """:func:`move_newer_aside` on rank 0 (every rank learns the outcome), with one warning naming what moved."""
    moved = decided_on_rank0(lambda: move_newer_aside(save_dir, resumed_at))
    if moved is not None:
        names = ", ".join(sorted((p.name for p in moved.iterdir()), key=lambda n: int(TAG_RE.match(n).group(1))))
        warn(
            f"{save_dir} held checkpoints newer than update {resumed_at} ({names}), from the run being rolled "
            f"back: moved them to {moved} (nothing deleted; move them back to continue that run)"
        )
    return moved


def _tracker():
    from deepspeed.runtime.activation_checkpointing import checkpointing

    return checkpointing.get_cuda_rng_tracker()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "tracker": _tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_rng(save_dir: str | Path, tag: str, rank: int) -> None:
    folder = Path(save_dir) / tag
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".rng_rank{rank}.pt.tmp"
    torch.save(rng_state(), tmp)
    durable.fsync_file(tmp)
    os.replace(tmp, folder / f"rng_rank{rank}.pt")


def load_rng(load_dir: str | Path, tag: str, rank: int) -> None:
    path = Path(load_dir) / tag / f"rng_rank{rank}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint was saved with another world size or is corrupt")
    state = load_file(path)
    torch.set_rng_state(state["torch"])
    _tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
