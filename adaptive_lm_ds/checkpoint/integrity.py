"""Checksums: every file of a checkpoint or model folder is hashed at save and checked before anything reads it.

``FOLDER/checksums.sha256`` lists ``sha256  name`` for every file (the format of ``sha256sum``, so
``cd FOLDER && sha256sum -c checksums.sha256`` checks it by hand). A training checkpoint's manifest is
written by rank 0 after every rank finished writing and before the ``.complete`` marker; a model
folder's (export, convert) before the folder is renamed into place.

Verification cannot be switched off by the files it verifies: a folder whose manifest is missing,
empty or malformed, lists a name outside the folder (``../x``, an absolute path) or a symlink, or that
holds a file the manifest does not list, is damaged, exactly like a flipped byte or a truncated shard.
Hashing a file also flushes it to the disk (:func:`durable.fsync_file`), so the manifest, written
afterwards, never names bytes that a node crash could still lose.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from adaptive_lm_ds.checkpoint import durable
from adaptive_lm_ds.checkpoint.errors import CheckpointError

MANIFEST = "checksums.sha256"
_NOT_LISTED = {MANIFEST, ".complete"}  # the manifest itself and the marker written after it


def sha256_of(path: Path, chunk: int = 1 << 20, *, flush: bool = False) -> str:
    """Hex sha256 of a file; ``flush``: fsync it too (the writer's side), on the same open file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
        if flush:
            os.fsync(f.fileno())
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Names (POSIX, relative) of every file below ``folder`` that its manifest must list."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name not in _NOT_LISTED
    )


def write_manifest(folder: str | Path, names: Iterable[str] | None = None) -> Path:
    """Hash ``names`` (default: every file below ``folder``) into its manifest; files and manifest are
    fsynced and the manifest is published by a rename (its folder fsynced too)."""
    folder = Path(folder)
    names = folder_files(folder) if names is None else sorted(names)
    lines = "".join(f"{sha256_of(folder / name, flush=True)}  {name}\n" for name in names)
    durable.fsync_dir(folder)  # the files' names (DeepSpeed's renames) before the manifest that lists them
    durable.atomic_write(folder / MANIFEST, lines)
    return folder / MANIFEST


def _safe_name(name: str) -> bool:
    """A plain relative path inside the folder: no ``..``, no absolute path, no empty or ``.`` part."""
    pure = PurePosixPath(name)
    return (
        not pure.is_absolute()
        and "\\" not in name
        and pure.as_posix() == name
        and all(part not in ("", ".", "..") for part in pure.parts)
    )


def read_manifest(folder: Path) -> dict[str, str]:
    """``{name: sha256}``; a missing, empty or malformed manifest, or an unsafe name, is a CheckpointError."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the files of {folder} cannot be verified, so it counts as damaged")
    entries = {}
    for line in path.read_text(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise CheckpointError(f"{path} is malformed at {line[:60]!r}; the folder is damaged")
        if not _safe_name(name):
            raise CheckpointError(f"{path} lists {name[:60]!r}, a name outside {folder}; the folder is damaged")
        entries[name] = digest
    if not entries:
        raise CheckpointError(f"{path} lists no files; the folder is damaged")
    return entries


def verify(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """Raise CheckpointError naming the first problem: manifest (see :func:`read_manifest`), a listed file
    missing, a symlink or with another sha256, or a file the manifest does not list.

    ``names``: the files a reader of the folder opens (a model folder's); every one present must be
    listed. Default: every file below ``folder`` (a training checkpoint).
    """
    folder = Path(folder)
    entries = read_manifest(folder)
    present = folder_files(folder) if names is None else [n for n in names if (folder / n).exists()]
    unlisted = [name for name in present if name not in entries]
    if unlisted:
        raise CheckpointError(f"{folder / unlisted[0]} is not listed in {MANIFEST}; the folder is damaged")
    for name, digest in entries.items():
        path = folder / name
        if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()):
            raise CheckpointError(f"{path} is a symlink (listed in {MANIFEST}); the folder is damaged")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {MANIFEST}); the folder is incomplete")
        if sha256_of(path) != digest:
            raise CheckpointError(f"{path} is damaged: its sha256 differs from the one recorded at save ({MANIFEST})")
