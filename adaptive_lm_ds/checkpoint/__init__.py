"""The training checkpoint, owned in one place: record, writer, readers, name table, checksums, lock.

* :mod:`record` -- :class:`CheckpointRecord`, the one typed record (``TAG/trainer_state.json``);
* :mod:`writer` -- :func:`save_checkpoint`, used by the trainer and the layout converter;
* :mod:`folders` -- tags, ``latest``, ``.complete``, pruning, RNG, resume resolution with fallback;
* :mod:`reader` -- :func:`open_checkpoint` for export and eval;
* :mod:`safe_files` -- weights-only loading, also inside DeepSpeed (:class:`SafeCheckpointEngine`);
* :mod:`integrity` -- the sha256 manifest written at save and verified before any read;
* :mod:`durable` -- fsync before every publishing rename;
* :mod:`agreement` -- rank 0 decides (resume tag, verification, commit, pruning), every rank learns it;
* :mod:`lock` -- one run per save dir (a renewed lease);
* :mod:`names` -- DeepSpeed's file and pipeline-layer names -> ``AdaptiveLM`` names.

Guarantees are listed in docs/training.md, "Checkpoints".
"""

from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.checkpoint.folders import (
    COMPLETE,
    LATEST,
    commit_checkpoint,
    complete_tags,
    load_rng,
    move_newer_aside,
    prune,
    read_latest,
    resolve_restore,
    save_rng,
    set_aside_newer,
    tag_for,
)
from adaptive_lm_ds.checkpoint.integrity import MANIFEST
from adaptive_lm_ds.checkpoint.lock import SaveDirLock
from adaptive_lm_ds.checkpoint.reader import is_training_checkpoint, locate, open_checkpoint, resume_point
from adaptive_lm_ds.checkpoint.record import STATE_FILE, CheckpointRecord, read_record
from adaptive_lm_ds.checkpoint.safe_files import SafeCheckpointEngine, install, load_file
from adaptive_lm_ds.checkpoint.writer import save_checkpoint

__all__ = [
    "COMPLETE",
    "LATEST",
    "MANIFEST",
    "STATE_FILE",
    "CheckpointError",
    "CheckpointRecord",
    "SafeCheckpointEngine",
    "SaveDirLock",
    "commit_checkpoint",
    "complete_tags",
    "install",
    "is_training_checkpoint",
    "load_file",
    "load_rng",
    "locate",
    "move_newer_aside",
    "open_checkpoint",
    "prune",
    "read_latest",
    "read_record",
    "resolve_restore",
    "resume_point",
    "save_checkpoint",
    "save_rng",
    "set_aside_newer",
    "tag_for",
]
