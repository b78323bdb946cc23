"""Interoperability with fairseq: safe checkpoint loading and the key mapping both ways."""

from adaptive_lm_ds.interop.fairseq import (
    FairseqConversionError,
    fairseq_to_ours,
    infer_config,
    key_map,
    load_fairseq_checkpoint,
    ours_to_fairseq,
    save_fairseq_checkpoint,
)
from adaptive_lm_ds.interop.safe_load import UnsafeCheckpointError, safe_load

__all__ = [
    "FairseqConversionError",
    "UnsafeCheckpointError",
    "fairseq_to_ours",
    "infer_config",
    "key_map",
    "load_fairseq_checkpoint",
    "ours_to_fairseq",
    "safe_load",
    "save_fairseq_checkpoint",
]
