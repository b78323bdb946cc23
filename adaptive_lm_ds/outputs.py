"""The one policy for a tool's ``--output``: never destroy what the tool did not write.

A model folder (``adaptive-lm-export``, ``adaptive-lm-convert``, anything calling
:func:`adaptive_lm_ds.formats.consolidated.save_consolidated`) may replace an existing ``--output`` only when

* it does not exist, or is an empty folder, or
* it is a previous output of the *same* tool (its ``config.json`` names that writer) holding nothing
  but the entries that tool writes, or
* the user passed ``--force``;

and never when the folder is, or contains, one of the tool's inputs (``--output`` = ``--checkpoint``
would otherwise empty the save dir), ``--force`` or not. A single output file (a fairseq ``.pt``)
follows the same rule: an existing file is replaced only with ``--force`` and never when it is an
input. The new content is written under a temporary name beside the target and renamed into place;
the old folder is moved aside first and removed only after the rename, so a crash leaves either the
old or the new folder, never neither.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from adaptive_lm_ds.data.dictionary import current_umask
from adaptive_lm_ds.errors import UserError

OUTPUT_MARKER = "config.json"  # the file whose "writer" field says which tool made a folder


class OutputError(UserError, ValueError):
    """An ``--output`` that would destroy data; the message names it and says what to do."""


def _holds(folder: Path, inputs: Iterable[str | os.PathLike]) -> Path | None:
    """The first input that is ``folder`` itself or lies inside it (symlinks resolved)."""
    folder = folder.resolve()
    for item in inputs:
        item = Path(item).resolve()
        if item == folder or folder in item.parents:
            return item
    return None


def _writer_of(folder: Path) -> str | None:
    try:
        meta = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("writer") if isinstance(meta, dict) else None


def check_output_folder(
    path: str | os.PathLike,
    writer: str,
    own_entries: Iterable[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> None:
    """Raise :class:`OutputError` unless folder ``path`` may be replaced by ``writer``'s output.

    ``own_entries``: the names ``writer`` puts in its folder (files or sub-folders); a previous output
    holding anything else (a notes file, a data-bin) is foreign and needs ``force``.
    """
    path = Path(path)
    held = _holds(path, inputs)
    if held is not None:
        what = "is" if held == path.resolve() else "contains"
        raise OutputError(f"--output {path} {what} the input {held}; choose another output folder")
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        if force:
            return
        raise OutputError(f"--output {path} exists and is not a folder; remove it or pass --force to replace it")
    entries = {p.name for p in path.iterdir()}
    if not entries or force:
        return
    if _writer_of(path) == writer and entries <= set(own_entries):
        return
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise OutputError(
        f"--output {path} is not empty ({shown}) and is not a previous output of {writer}; "
        "choose an empty or new folder, or pass --force to replace it"
    )


def check_output_file(
    path: str | os.PathLike, *, force: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """Raise :class:`OutputError` unless file ``path`` may be written (new, or ``force`` and not an input)."""
    path = Path(path)
    held = _holds(path, inputs)
    if held is not None:
        raise OutputError(f"--output {path} is the input {held}; choose another output file")
    if path.is_dir():
        raise OutputError(f"--output {path} is a folder; name a file")
    if path.exists() and not force:
        raise OutputError(f"--output {path} exists; choose a new file name or pass --force to replace it")


def temp_folder_beside(path: Path) -> Path:
    """An empty hidden folder next to ``path`` (same file system, so :func:`replace_folder` is a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the folder becomes the output, as mkdir would
    return tmp


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``; whatever was at ``path`` is removed only afterwards.

    Callers check ``path`` with :func:`check_output_folder` first.
    """
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old / path.name, path)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
