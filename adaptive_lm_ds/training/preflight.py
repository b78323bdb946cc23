"""Start-up checks: failures we can see coming are reported before the first step, in one line.

* **precision**: DeepSpeed's CPU accelerator runs fp16 only where oneDNN supports it (Intel CPUs
  with AVX512-FP16/AMX; not e.g. AMD EPYC); otherwise ``deepspeed.initialize`` raises a bare
  ``ValueError``. We ask the accelerator first and say what to use instead.
* **folders**: ``--save-dir`` and ``--tensorboard-logdir`` must be writable (a read-only save dir
  otherwise trains to the first save and loses everything), and the save dir's disk must hold one
  more checkpoint, whose size we know from the parameter count, precision, optimizer and ZeRO stage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.memory import TrainLayout, state_bytes
from adaptive_lm_ds.model.sharding import plain_shapes
from adaptive_lm_ds.training.ds_config import TrainConfigError


class StartupError(UserError, RuntimeError):
    """A folder the run cannot write, or a disk too small for a checkpoint; the message says what to do."""


def fp16_supported() -> bool:
    """Whether this process's DeepSpeed accelerator can train in fp16 (False where the probe fails)."""
    from deepspeed.accelerator import get_accelerator

    try:
        return bool(get_accelerator().is_fp16_supported())
    except Exception:  # noqa: BLE001 - the CPU probe raises where oneDNN lacks the op
        return False


def check_precision(precision: str, *, fp16_ok: bool | None = None) -> None:
    """Refuse a precision this machine cannot train in (``fp16_ok`` overrides the probe, for tests)."""
    if precision != "fp16":
        return
    if not (fp16_supported() if fp16_ok is None else fp16_ok):
        from deepspeed.accelerator import get_accelerator

        raise TrainConfigError(
            f"the DeepSpeed config enables fp16, which this {get_accelerator().device_name()} device does not "
            "support (DeepSpeed's is_fp16_supported() is false); use a bf16 or fp32 config (ds_configs/zero1_bf16.json)"
        )


def check_writable(folder: str | Path, flag: str) -> None:
    """Create ``folder`` if needed and prove we can write there (a probe file of ours, removed again)."""
    folder = Path(folder)
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StartupError(
            f"{flag} {folder} is not writable ({e.strerror or e}); fix its permissions or choose another folder"
        ) from None


def checkpoint_bytes(cfg: ModelConfig, precision: str, optimizer: str, zero_stage: int) -> int:
    """Bytes of one checkpoint, all ranks together: the weights plus the optimizer's fp32 state.

    DeepSpeed saves every weight once per TP slice (DP rank 0) and each rank's optimizer partition,
    so the total does not depend on the layout: ``memory.state_bytes`` at DP = 1.
    """
    params = sum(shape.numel() for shape in plain_shapes(cfg).values())
    layout = TrainLayout(precision=precision, optimizer=optimizer, zero_stage=zero_stage)
    weights, _, optimizer_gpu, optimizer_cpu = state_bytes(params, layout)
    return weights + optimizer_gpu + optimizer_cpu


def check_free_space(save_dir: str | Path, needed: int) -> None:
    """The save dir's disk must have room for one more checkpoint (``needed`` bytes)."""
    from adaptive_lm_ds.checkpoint.writer import human_bytes, mount_point

    disk = mount_point(save_dir)
    free = shutil.disk_usage(disk).free
    if free < needed:
        raise StartupError(
            f"--save-dir {save_dir} is on disk {disk} with {human_bytes(free)} free, less than one checkpoint "
            f"({human_bytes(needed)}); free space or use another --save-dir"
        )
