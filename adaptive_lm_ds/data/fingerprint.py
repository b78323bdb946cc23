"""Which dictionary a split's ids came from: ``PREFIX.dict.json`` beside ``PREFIX.bin``/``PREFIX.idx``.

A ``.bin`` holds bare ids; read with another ``dict.txt`` it trains or scores the wrong words, and the
id-range check catches that only when the other dictionary is *smaller*. So preprocessing records
the dictionary's fingerprint with every split it writes, and every reader (training, eval,
conversion) compares the ``dict.txt`` it was given before using it.

The fingerprint is the SHA-256 of the words in id order (specials included, one per line): exactly
what decides the mapping id -> word. Counts are left out, since they do not change any id.
Data-bins made before fingerprints existed (or by fairseq) have no record: readers warn once and go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from adaptive_lm_ds.data.dictionary import Dictionary, atomic_write_bytes
from adaptive_lm_ds.data.errors import DataError

FORMAT = "adaptive-lm-ds/dict-fingerprint"
SUFFIX = ".dict.json"
_warned: set[str] = set()

LOG = logging.getLogger("adaptive_lm_ds.data")


def fingerprint(dictionary: Dictionary) -> str:
    """``sha256:<hex>`` of ``dictionary``'s words in id order."""
    digest = hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).hexdigest()
    return f"sha256:{digest}"


def record_path(prefix: str | os.PathLike) -> Path:
    return Path(str(prefix) + SUFFIX)


def forget(prefix: str | os.PathLike) -> None:
    """Remove ``PREFIX``'s record before the split is rewritten (a crash then leaves none, not a wrong one)."""
    record_path(prefix).unlink(missing_ok=True)


def record(prefix: str | os.PathLike, dictionary: Dictionary) -> None:
    """Write ``PREFIX.dict.json``: the split at ``PREFIX`` was made with ``dictionary``."""
    meta = {"format": FORMAT, "dictionary": fingerprint(dictionary), "types": len(dictionary)}
    atomic_write_bytes(record_path(prefix), (json.dumps(meta, indent=2) + "\n").encode())


def _recorded(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is unreadable ({err}); re-run preprocessing to rewrite it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "dictionary" not in meta:
        raise DataError(f"{path} is not a dictionary fingerprint record; re-run preprocessing to rewrite it")
    return meta


def check(prefix: str | os.PathLike, dictionary: Dictionary, dict_path: str | os.PathLike) -> None:
    """Raise :class:`DataError` when ``dictionary`` (read from ``dict_path``) is not the one ``PREFIX`` was made with.

    No record (an older or fairseq-made data-bin): one warning line on stderr per split, then go on.
    """
    path = record_path(prefix)
    if not path.is_file():
        if str(path) not in _warned:
            _warned.add(str(path))
            LOG.warning(
                f"{prefix}.bin has no dictionary fingerprint ({path.name}), so {dict_path} cannot be "
                "checked against it; re-run adaptive-lm-preprocess to record one"
            )
        return
    meta = _recorded(path)
    if meta["dictionary"] != fingerprint(dictionary):
        raise DataError(
            f"{dict_path} ({len(dictionary)} types) is not the dictionary {prefix}.bin was made with "
            f"({meta.get('types', '?')} types, fingerprint in {path.name}); use that data-bin's own dict.txt, "
            "or re-run preprocessing with --srcdict to make the data with this one"
        )


def check_data_bin_dictionary(dict_path: str | os.PathLike, dictionary: Dictionary) -> None:
    """When ``dict_path`` sits in a data-bin, check it against every split recorded there (conversion)."""
    folder = Path(dict_path).parent
    for path in sorted(folder.glob("*" + SUFFIX)):
        check(str(path)[: -len(SUFFIX)], dictionary, dict_path)
