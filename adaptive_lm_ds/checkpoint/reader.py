"""The one checkpoint reader for offline use (export, eval): find the tag, verify it, read its record.

Resume goes through :func:`folders.resolve_restore` (which also falls back past a damaged newest
checkpoint) and DeepSpeed's loader with our :class:`SafeCheckpointEngine`; export and eval use
:func:`open_checkpoint` and :func:`load_file`. Either way every file is checksum-verified before it
is opened and unpickled weights-only.
"""

from __future__ import annotations

from pathlib import Path

from adaptive_lm_ds.checkpoint import folders
from adaptive_lm_ds.checkpoint.agreement import decided_on_rank0
from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.checkpoint.record import STATE_FILE, CheckpointRecord, read_record


def is_training_checkpoint(path: str | Path) -> bool:
    """A tag folder or a save dir (something :func:`open_checkpoint` accepts)."""
    path = Path(path)
    return path.is_dir() and ((path / folders.LATEST).is_file() or (path / STATE_FILE).is_file())


def locate(path: str | Path) -> Path:
    """A tag folder, from itself or from a save dir (its ``latest``)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        if not (path / folders.COMPLETE).is_file():
            raise CheckpointError(f"{path} has no {folders.COMPLETE} marker: the save did not finish; use an older tag")
        return path
    tag = folders.read_latest(path) if path.is_dir() else None
    if tag is None:
        raise CheckpointError(f"{path} is neither a checkpoint folder ({STATE_FILE}) nor a save dir with `latest`")
    return path / tag


def open_checkpoint(path: str | Path) -> tuple[Path, CheckpointRecord]:
    """``(tag folder, record)`` of a training checkpoint, every file checksum-verified first."""
    tag_dir = locate(path)
    try:
        folders.verify_tag(tag_dir)
    except CheckpointError as e:
        raise CheckpointError(f"cannot load checkpoint {tag_dir}: {e}") from None
    return tag_dir, read_record(tag_dir)


def resume_point(save_dir: str | Path, restore_file: str) -> tuple[Path, str, CheckpointRecord] | None:
    """``(folder, tag, record)`` to resume from, or None to start fresh: decided and verified on rank 0
    (:func:`folders.resolve_restore`'s rules, the record's fields checked), the same on every rank."""

    def decide():
        found = folders.find_restore(save_dir, restore_file)
        return None if found is None else (*found, read_record(found[0] / found[1]))

    return decided_on_rank0(decide)
