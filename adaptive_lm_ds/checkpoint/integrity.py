"""Checksums: every file of a checkpoint is hashed at save and checked before anything reads it.

``TAG/checksums.sha256`` lists ``sha256  name`` for every file of the tag folder (the format of
``sha256sum``, so ``cd TAG && sha256sum -c checksums.sha256`` checks it by hand). Rank 0 writes it
after every rank finished writing and before the ``.complete`` marker; a flipped byte or a truncated
shard is then named before DeepSpeed, export or eval opens the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from adaptive_lm_ds.checkpoint.errors import CheckpointError

MANIFEST = "checksums.sha256"
_SKIP = {MANIFEST, ".complete"}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name not in _SKIP and not p.name.startswith("."))


def write_manifest(tag_dir: str | Path) -> Path:
    """Hash every file of ``tag_dir`` into its manifest (temp file + rename)."""
    tag_dir = Path(tag_dir)
    lines = "".join(f"{sha256_of(p)}  {p.relative_to(tag_dir).as_posix()}\n" for p in _files(tag_dir))
    tmp = tag_dir / f".{MANIFEST}.tmp"
    tmp.write_text(lines)
    tmp.replace(tag_dir / MANIFEST)
    return tag_dir / MANIFEST


def read_manifest(tag_dir: Path) -> dict[str, str] | None:
    path = tag_dir / MANIFEST
    if not path.is_file():
        return None
    entries = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise CheckpointError(f"{path} is malformed at {line[:60]!r}; the checkpoint is damaged")
        entries[name] = digest
    return entries


def verify(tag_dir: str | Path) -> bool:
    """Raise CheckpointError naming the first missing or damaged file; False when there is no manifest."""
    tag_dir = Path(tag_dir)
    entries = read_manifest(tag_dir)
    if entries is None:
        return False
    for name, digest in entries.items():
        path = tag_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {MANIFEST}); the checkpoint is incomplete")
        if sha256_of(path) != digest:
            raise CheckpointError(f"{path} is damaged: its sha256 differs from the one recorded at save ({MANIFEST})")
    return True
