"""Checkpoint folders around DeepSpeed's save/load: tags, ``latest``, pruning, RNG, resume resolution.

DeepSpeed writes the model, optimizer and scheduler state of every rank under ``SAVE_DIR/TAG/``. What
we add:

* ``latest`` is updated only after **every** rank finished writing, the checksum manifest is written
  and a ``.complete`` marker is in the tag folder, by an atomic rename: a save killed half-way never
  becomes the resume point;
* on resume from ``latest`` every file is checked against the manifest; a damaged newest checkpoint
  is skipped with a one-line warning for the newest intact one (an explicit ``--restore-file`` that
  is damaged is an error: the user asked for that one);
* the RNG states of every rank (torch CPU/CUDA and the model-parallel tracker) in
  ``TAG/rng_rank{R}.pt``, so a resumed run draws the same dropout masks as an uninterrupted one;
* ``--keep-last-n`` pruning of older update checkpoints (only folders named ``checkpoint_N``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from adaptive_lm_ds.checkpoint import integrity
from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.checkpoint.safe_files import load_file

LATEST = "latest"
COMPLETE = ".complete"
TAG_RE = re.compile(r"^checkpoint_(\d+)$")


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
        print(f"| warning: {message}", file=sys.stderr, flush=True)


def verify_tag(tag_dir: Path) -> None:
    """Checksums of one tag folder (a CheckpointError names the damaged file); warns when it has none."""
    if not integrity.verify(tag_dir):
        warn(f"{tag_dir} has no {integrity.MANIFEST} (saved by an older version): its files are not verified")


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
    """(folder, tag) to load, verified; or None to start fresh (fairseq's rule for checkpoint_last)."""
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def commit_checkpoint(save_dir: str | Path, tag: str, keep_last_n: int, any_rank=None) -> None:
    """After every rank saved: checksum the files, mark ``tag`` complete, point ``latest`` at it, prune.

    ``any_rank(flag)`` (an all-reduce) lets every rank learn that rank 0's writes failed, so none waits
    for it; a failure raises :class:`OSError` on every rank.
    """
    if dist.is_initialized():
        dist.barrier()
    error = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        root = Path(save_dir)
        try:
            integrity.write_manifest(root / tag)
            _atomic_write(root / tag / COMPLETE, "ok\n")
            _atomic_write(root / LATEST, tag + "\n")
        except OSError as e:
            error = e
        if error is None and keep_last_n >= 0:
            prune(root, keep_last_n, protect=tag)
    if any_rank is not None:
        if any_rank(error is not None):
            raise error or OSError(f"rank 0 could not commit checkpoint {tag}")
    elif dist.is_initialized():
        dist.barrier()
    if error is not None:
        raise error


def prune(save_dir: Path, keep_last_n: int, protect: str) -> list[str]:
    """Delete update checkpoints beyond the newest ``keep_last_n`` (never ``protect``)."""
    numbered = sorted(
        (int(m.group(1)), p.name) for p in save_dir.iterdir() if p.is_dir() and (m := TAG_RE.match(p.name))
    )
    doomed = [name for _, name in numbered[: max(0, len(numbered) - max(keep_last_n, 1))] if name != protect]
    for name in doomed:
        shutil.rmtree(save_dir / name, ignore_errors=True)
    return doomed


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
