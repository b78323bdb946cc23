"""The consolidated model format: one folder that any layout (TP, PP, DP) loads from and saves to.

Layout of ``DIR``::

    model.safetensors   the AdaptiveLM parameters at TP = 1: unsharded, unpadded, fp32, named as in
                        ``AdaptiveLM.named_parameters()`` (a tied tensor appears once, under its owner)
    config.json         {"format": "adaptive-lm-ds/consolidated", "version": 1, "writer": TOOL,
                         "model": dataclasses.asdict(ModelConfig), "tied": {alias: owner, ...}}
    dict.txt            the fairseq dictionary, when one was given
    checksums.sha256    sha256 of each of the files above (``sha256sum -c`` format), checked on every read

``tied`` is :func:`tied_names`, the ``{alias: owner}`` map of tied tensors (docs/model.md, "Tying").
:func:`save_consolidated` writes a temp folder, fsyncs it and renames it, so a reader never sees a
half-written model, even after a crash; :func:`load_consolidated` (the one reader: eval, generate,
``--init-from``, ``--to-fairseq``, the layout writer) verifies the checksums before it reads a byte, so a
flipped byte is one line naming the file (:mod:`adaptive_lm_ds.checkpoint.integrity`). Whether an
existing folder may be replaced is decided by :mod:`adaptive_lm_ds.outputs`
(``writer`` names the tool, for that check).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from adaptive_lm_ds.checkpoint import durable, integrity
from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.config import ConfigError, ModelConfig
from adaptive_lm_ds.data import DataError, Dictionary
from adaptive_lm_ds.data.dictionary import current_umask
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.formats.streaming import read_safetensors, write_safetensors
from adaptive_lm_ds.model.sharding import tied_names
from adaptive_lm_ds.outputs import check_output_folder, replace_folder, temp_folder_beside

FORMAT = "adaptive-lm-ds/consolidated"
VERSION = 1
WEIGHTS, CONFIG, DICT = "model.safetensors", "config.json", "dict.txt"
DEFAULT_WRITER = "adaptive_lm_ds"


class ConsolidatedFormatError(UserError, ValueError):
    """A consolidated folder that is missing, incomplete or corrupt; the message names the file."""


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """:class:`ModelConfig` from ``dataclasses.asdict`` output (JSON lists back to tuples)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConsolidatedFormatError(f"config.json has unknown model fields {unknown}; written by a newer version?")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return ModelConfig(**fixed)


def check_model_output(
    path: str | os.PathLike,
    *,
    writer: str = DEFAULT_WRITER,
    force: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    own_entries: Sequence[str] = (),
) -> None:
    """Raise :class:`~adaptive_lm_ds.outputs.OutputError` unless :func:`save_consolidated` may write ``path``
    (tools call it before their slow part, so a refused ``--output`` fails fast)."""
    check_output_folder(
        path, writer, {WEIGHTS, CONFIG, DICT, integrity.MANIFEST, *own_entries}, force=force, inputs=inputs
    )


def save_consolidated(
    path: str | os.PathLike,
    cfg: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    dictionary: Dictionary | None = None,
    extra: dict[str, Any] | None = None,
    *,
    writer: str = DEFAULT_WRITER,
    force: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    own_entries: Sequence[str] = (),
) -> Path:
    """Write ``state_dict`` (consolidated names, tied tensors once) and ``cfg`` to folder ``path``.

    ``extra`` (JSON-able) is stored in config.json under ``"extra"`` (e.g. where the model came from).
    An existing ``path`` is replaced only when :func:`~adaptive_lm_ds.outputs.check_output_folder`
    allows it (empty, a previous output of ``writer``, or ``force``; never when it holds one of
    ``inputs``), and only once the new folder is complete. ``own_entries``: further names ``writer``
    puts in the folder after this call (the converter's ``deepspeed/``).
    """
    path = Path(path)
    aliases = set(tied_names(cfg)) & set(state_dict)
    if aliases:
        raise ConsolidatedFormatError(f"state dict holds tied aliases {sorted(aliases)}; store only the owners")
    if dictionary is not None and len(dictionary) != cfg.vocab_size:
        raise ConsolidatedFormatError(f"dictionary has {len(dictionary)} types but the model {cfg.vocab_size}")
    check_model_output(path, writer=writer, force=force, inputs=inputs, own_entries=own_entries)
    tmp = temp_folder_beside(path)
    try:
        write_safetensors(str(tmp / WEIGHTS), state_dict, metadata={"format": FORMAT})  # one tensor at a time
        (tmp / WEIGHTS).chmod(0o666 & ~current_umask())  # safetensors creates 0600; the umask decides
        meta = {"format": FORMAT, "version": VERSION, "writer": writer}
        meta.update(model=dataclasses.asdict(cfg), tied=tied_names(cfg))
        if extra:
            meta["extra"] = extra
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        if dictionary is not None:
            dictionary.save(tmp / DICT)
        integrity.write_manifest(tmp, [name for name in (WEIGHTS, CONFIG, DICT) if (tmp / name).is_file()])
        durable.fsync_tree(tmp)
        replace_folder(tmp, path)
        durable.fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def is_consolidated(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a consolidated folder, checked for format and version."""
    config = Path(path) / CONFIG
    if not config.is_file():
        raise ConsolidatedFormatError(f"{config} is missing: {path} is not a consolidated model folder")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConsolidatedFormatError(f"{config} is not valid JSON ({err}); the folder is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConsolidatedFormatError(f"{config}: 'format' is not {FORMAT!r}; not a consolidated model")
    if meta.get("version") != VERSION:
        raise ConsolidatedFormatError(f"{config}: version {meta.get('version')} is not supported (expected {VERSION})")
    return meta


def load_consolidated(path: str | os.PathLike) -> tuple[ModelConfig, Mapping[str, torch.Tensor], Dictionary | None]:
    """``(ModelConfig, state dict, Dictionary or None)`` of a folder written by :func:`save_consolidated`.

    The state dict is a :class:`~adaptive_lm_ds.formats.streaming.LazyTensors` over the file: each
    tensor is read when it is asked for, so loading a model never holds a second whole copy.
    """
    path = Path(path)
    if not is_consolidated(path):
        read_config(path)  # one line naming the missing config.json
    try:
        integrity.verify(path, names=(WEIGHTS, CONFIG, DICT))
    except CheckpointError as err:
        raise ConsolidatedFormatError(f"{err}; export or convert the model again") from None
    meta = read_config(path)
    try:
        cfg = model_config_from_dict(meta["model"]).validate()
    except (KeyError, TypeError, ConfigError) as err:
        raise ConsolidatedFormatError(f"{path / CONFIG}: invalid model config ({err})") from None
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ConsolidatedFormatError(f"{weights} is missing; the folder is incomplete")
    try:
        state = read_safetensors(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConsolidatedFormatError(f"{weights} is corrupt ({err})") from None
    dictionary = None
    if (path / DICT).is_file():
        try:
            dictionary = Dictionary.load(path / DICT)
        except DataError as err:
            raise ConsolidatedFormatError(str(err)) from None
    return cfg, state, dictionary
