"""Crash-consistent publishing: a file reaches the disk before the rename that makes it visible.

``os.replace`` is atomic, but without ``fsync`` a node crash can leave the new *name* pointing at
empty or partial data (the file's blocks were still in the page cache). Every publishing step of a
checkpoint or model folder is therefore: write a temp file, fsync it, rename it, fsync the folder
(the rename itself lives in the folder's entry table). Cost per save: BENCHMARKS.md, "Checkpoint fsync".
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    """``path`` holds ``text`` or its old content after a crash, never a mix or nothing."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder below ``folder`` (and ``folder``), before renaming it into place."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*"), reverse=True):  # deepest first: children before their folder
        if p.is_symlink():
            continue
        if p.is_dir():
            fsync_dir(p)
        else:
            fsync_file(p)
    fsync_dir(folder)
