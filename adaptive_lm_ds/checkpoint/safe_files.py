"""Every tensor file of a training checkpoint is read with ``torch.load(weights_only=True)``.

DeepSpeed's ``TorchCheckpointEngine.load`` unpickles with weights-only loading switched off: a checkpoint folder
from elsewhere could run code on resume. :class:`SafeCheckpointEngine` replaces it on our engines
(:func:`install`), so every file DeepSpeed opens -- model states, ZeRO optimizer partitions, pipeline
layer files -- goes through the weights-only unpickler with an explicit allowlist of the few *data*
classes DeepSpeed pickles (:func:`deepspeed_globals`). Our own files (RNG, export) use
:func:`load_file`. Anything else (a function such as ``os.system``, another class) is refused with
one line naming the global and the file.

The engine's ``save`` records the first write error instead of raising it, so every rank still
reaches DeepSpeed's barriers; the writer then decides on all ranks together (a full disk on one rank
stops all of them with one line, none hangs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.interop.safe_load import UnsafeCheckpointError, safe_load

ALLOWLIST_NAME = "adaptive_lm_ds.checkpoint (tensors, DeepSpeed's ZeroStageEnum, loss scalers, fragment addresses)"


def deepspeed_globals() -> list[Any]:
    """The data classes DeepSpeed 0.19 pickles into its checkpoint files (found by saving every ds_configs/ kind)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def load_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """One checkpoint file, weights-only; any failure (unsafe, truncated, garbage) is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return safe_load(path, deepspeed_globals(), ALLOWLIST_NAME, map_location=map_location)
    except UnsafeCheckpointError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types on a damaged file
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(
            f"{path} is unreadable ({type(e).__name__}: {first}); the checkpoint is corrupt"
        ) from None


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch engine with weights-only loads and deferred save errors."""

    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.name = "adaptive_lm_ds.SafeCheckpointEngine"
        self.failure: BaseException | None = None

    def load(self, path: str, map_location=None):
        return load_file(path, map_location=map_location)

    def save(self, state_dict, path: str):
        if self.failure is not None:  # the disk already failed: do not write more
            return
        try:
            super().save(state_dict, path)
        except (OSError, RuntimeError) as e:  # RuntimeError: torch's "file write failed" on a full disk
            self.failure = e

    def makedirs(self, path, exist_ok=False):
        try:
            super().makedirs(path, exist_ok=exist_ok)
        except OSError as e:
            self.failure = self.failure or e


# DeepSpeed JSON keys with which DeepSpeed opens checkpoint files itself, past SafeCheckpointEngine, with
# weights-only loading off: (path of keys, what it does)
SELF_LOADING_KEYS = [
    (("checkpoint", "load_universal"), "loads universal-checkpoint files with weights-only loading off"),
    (("datastates_ckpt",), "replaces the checkpoint engine that loads every file weights-only"),
]


def refuse_self_loading_keys(ds_config: dict, source: str) -> None:
    """One CheckpointError line naming the first key of ``ds_config`` (from ``source``) that would make
    DeepSpeed load checkpoint files itself; a key set to false / absent is fine."""
    for keys, what in SELF_LOADING_KEYS:
        value = ds_config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, False):
            name = ".".join(keys)
            raise CheckpointError(
                f"DeepSpeed config {source} sets {name!r}, which {what}; remove it (this program loads "
                "checkpoints itself, verified and weights-only)"
            )


def install(engine) -> SafeCheckpointEngine:
    """Give a DeepSpeed engine (plain or pipeline) our checkpoint engine; returns it."""
    from adaptive_lm_ds import deepspeed_compat

    return deepspeed_compat.install_checkpoint_engine(engine, SafeCheckpointEngine(getattr(engine, "_config", None)))
