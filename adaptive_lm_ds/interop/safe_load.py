"""Load checkpoints from the internet without running their code: ``torch.load(weights_only=True)``.

PyTorch's weights-only unpickler rebuilds tensors, storages and plain containers only. fairseq
checkpoints need a few more *data* classes, allowed here explicitly and only for the duration of the
call (``torch.serialization.safe_globals``, no global state changed):

* ``argparse.Namespace`` -- the ``args`` of older releases (``adaptive_lm_wiki103.v2``, ``adaptive_lm_gbw_huge``);
* numpy scalars and dtypes -- ``best_loss`` / ``val_loss`` values that older trainers stored as numpy floats.

Anything else (a function such as ``os.system``, a custom class, an omegaconf object) is refused with
:class:`UnsafeCheckpointError` naming the global the file asked for.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptive_lm_ds.errors import UserError


class UnsafeCheckpointError(UserError, ValueError):
    """The checkpoint's pickle references a global outside the allowlist (or is not a checkpoint)."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint file to load does not exist (still a ``FileNotFoundError`` for callers)."""


def _numpy_globals() -> list[Any]:
    scalar = getattr(np, "_core", np.core).multiarray.scalar  # numpy 2 moved np.core to np._core
    dtypes = [getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType")]
    return [scalar, np.dtype, *dtypes]


def allowed_globals() -> list[Any]:
    """What fairseq checkpoints may hold beyond torch's own weights-only defaults."""
    return [argparse.Namespace, *_numpy_globals()]


_GLOBAL_RE = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def safe_load(
    path: str | os.PathLike,
    allowed: list[Any] | None = None,
    allowlist_name: str = "adaptive_lm_ds.interop.safe_load (argparse.Namespace, numpy scalars, tensors)",
    map_location: Any = "cpu",
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with ``allowed`` (default :func:`allowed_globals`).

    Raises :class:`CheckpointNotFoundError` (a ``FileNotFoundError``) for a missing file and
    :class:`UnsafeCheckpointError` when the file needs a global outside the allowlist or cannot be unpickled at all.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(allowed_globals() if allowed is None else allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL_RE.search(str(err))
        if found:
            raise UnsafeCheckpointError(
                f"{path} asks to unpickle {found.group(1)}, which is not on the allowlist of "
                f"{allowlist_name}; refusing to load it, since unpickling arbitrary globals can run code. "
                "Re-save the checkpoint with plain data only."
            ) from None
        reason = next((line for line in str(err).splitlines() if "Unsupported" in line), "not a checkpoint")
        raise UnsafeCheckpointError(f"{path} could not be unpickled safely ({reason.strip()})") from None
    except RuntimeError as err:  # not a zip / legacy torch file at all
        raise UnsafeCheckpointError(f"{path} is not a readable torch checkpoint: {str(err).splitlines()[0]}") from None
