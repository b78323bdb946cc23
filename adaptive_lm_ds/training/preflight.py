"""Start-up checks: failures we can see coming are reported before the first step, in one line.

* **precision**: DeepSpeed's CPU accelerator runs fp16 only where oneDNN supports it (Intel CPUs
  with AVX512-FP16/AMX; not e.g. AMD EPYC); otherwise ``deepspeed.initialize`` raises a bare
  ``ValueError``. We ask the accelerator first and say what to use instead.
"""

from __future__ import annotations

from adaptive_lm_ds.training.ds_config import ConfigError


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

        raise ConfigError(
            f"the DeepSpeed config enables fp16, which this {get_accelerator().device_name()} device does not "
            "support (DeepSpeed's is_fp16_supported() is false); use a bf16 or fp32 config (ds_configs/zero1_bf16.json)"
        )
