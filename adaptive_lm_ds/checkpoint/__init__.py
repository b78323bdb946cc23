"""The training checkpoint, owned in one place: record, writer, readers, name table, checksums, lock.

* :mod:`record` -- :class:`CheckpointRecord`, the one typed record (``TAG/trainer_state.json``);
* :mod:`writer` -- :func:`save_checkpoint`, used by the trainer and the layout converter;
* :mod:`folders` -- tags, ``latest``, ``.complete``, pruning, RNG, resume resolution with fallback;
* :mod:`reader` -- :func:`open_checkpoint` for export and eval;
* :mod:`safe_files` -- weights-only loading, also inside DeepSpeed (:class:`SafeCheckpointEngine`);
* :mod:`integrity` -- the sha256 manifest written at save and verified before any read;
* :mod:`lock` -- one run per save dir;
* :mod:`names` -- DeepSpeed's file and pipeline-layer names -> ``AdaptiveLM`` names.

Guarantees are listed in README's "Checkpoints" section.
"""

from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.checkpoint.folders import (
    COMPLETE,
    LATEST,
    commit_checkpoint,
    complete_tags,
    load_rng,
    prune,
    read_latest,
    resolve_restore,
    save_rng,
    tag_for,
)
from adaptive_lm_ds.checkpoint.integrity import MANIFEST
from adaptive_lm_ds.checkpoint.lock import SaveDirLock
from adaptive_lm_ds.checkpoint.reader import is_training_checkpoint, locate, open_checkpoint
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
    "open_checkpoint",
    "prune",
    "read_latest",
    "read_record",
    "resolve_restore",
    "save_checkpoint",
    "save_rng",
    "tag_for",
]
