"""Offline export: a DeepSpeed checkpoint of any TP x PP x DP layout -> one consolidated model.

One process, no launcher: the checkpoint record (:mod:`adaptive_lm_ds.checkpoint`) says the model
config, the layout and the ZeRO stage; every file is checksum-verified before it is read and
unpickled weights-only. The weights come from the state adapter's reader
(:func:`adaptive_lm_ds.formats.state_reader.read_weights`: the fp32 masters of any layout and ZeRO stage,
TP shards joined, padding trimmed). DeepSpeed's ``zero_to_fp32`` is never handed a path: it globs the
folder again (a save dir whose path holds ``[``, ``*`` or ``?`` matches a look-alike sibling folder) and
unpickles what it finds with weights-only loading off.
"""

from __future__ import annotations

from pathlib import Path

from adaptive_lm_ds.checkpoint import open_checkpoint
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.formats.state_reader import read_weights
from adaptive_lm_ds.formats.streaming import LazyTensors


def consolidate_checkpoint(path: str | Path) -> tuple[ModelConfig, LazyTensors, Dictionary | None]:
    """``(ModelConfig, one-piece fp32 state dict, Dictionary or None)`` of a training checkpoint.

    The state dict is lazy (:mod:`adaptive_lm_ds.formats.streaming`): the ranks' saved files stay as
    loaded, and each one-piece fp32 tensor is assembled when asked for, so an export or evaluation never
    holds the whole model in fp32 beside them.
    """
    tag_dir, record = open_checkpoint(path)
    dictionary = Dictionary.load(tag_dir / "dict.txt") if (tag_dir / "dict.txt").is_file() else None
    return record.model_config(), read_weights(tag_dir, record), dictionary
