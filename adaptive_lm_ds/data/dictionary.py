"""Word dictionary with fairseq's exact semantics, so ids and dict.txt match ``fairseq-preprocess``.

Ids: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3 (implicit, never written to dict.txt), then
words by decreasing count; equal counts are ordered by the word's code points, because fairseq's
``Dictionary.finalize`` builds ``Counter(dict(sorted(...)))`` and ``most_common`` is a stable sort.
``finalize`` keeps words with ``count >= threshold`` (at most ``nwords`` entries, specials included)
and pads the vocabulary to a multiple of ``padding_factor`` with ``madeupwordNNNN`` (count 0).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from adaptive_lm_ds.data.errors import DataError

BOS_WORD, PAD_WORD, EOS_WORD, UNK_WORD = "<s>", "<pad>", "</s>", "<unk>"


class _IdLookup(dict):
    """word -> id mapping whose misses return ``<unk>`` and are counted (C-speed hits via ``map``)."""

    def __init__(self, unk: int) -> None:
        super().__init__()
        self.unk = unk
        self.misses = 0

    def __missing__(self, word: str) -> int:
        self.misses += 1
        return self.unk


class Dictionary:
    """fairseq-compatible vocabulary: ``symbols[i]`` is the word with id ``i``, ``counts[i]`` its count."""

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.counts: list[int] = []
        self._indices = _IdLookup(unk=3)
        self.bos_index = self.add_symbol(BOS_WORD)
        self.pad_index = self.add_symbol(PAD_WORD)
        self.eos_index = self.add_symbol(EOS_WORD)
        self.unk_index = self.add_symbol(UNK_WORD)
        self.nspecial = len(self.symbols)

    # ids of the special symbols (fairseq's method names)
    def bos(self) -> int:
        return self.bos_index

    def pad(self) -> int:
        return self.pad_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, word: str) -> bool:
        return word in self._indices

    def __getitem__(self, idx: int) -> str:
        return self.symbols[idx]

    def index(self, word: str) -> int:
        """Id of ``word``; ``<unk>`` (3) when it is not in the dictionary."""
        return self._indices.get(word, self.unk_index)

    @property
    def lookup(self) -> _IdLookup:
        """The word -> id dict (misses give ``<unk>``); ``list(map(d.lookup.__getitem__, words))``."""
        return self._indices

    def add_symbol(self, word: str, n: int = 1, overwrite: bool = False) -> int:
        """Add ``n`` occurrences of ``word`` (fairseq ``add_symbol``); returns its id."""
        if word in self._indices and not overwrite:
            idx = self._indices[word]
            self.counts[idx] += n
            return idx
        idx = len(self.symbols)
        self._indices[word] = idx
        self.symbols.append(word)
        self.counts.append(n)
        return idx

    def encode_line(self, line: str, append_eos: bool = True) -> np.ndarray:
        """Whitespace-split ``line`` to int64 ids (unknown -> ``<unk>``), plus ``</s>`` as fairseq does."""
        ids = list(map(self._indices.__getitem__, line.split()))
        if append_eos:
            ids.append(self.eos_index)
        return np.asarray(ids, dtype=np.int64)

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        word_counts: Counter,
        num_lines: int,
        threshold: int = -1,
        nwords: int = -1,
        padding_factor: int = 8,
    ) -> Dictionary:
        """Dictionary from whitespace-token counts of the training text (``fairseq-preprocess``).

        ``num_lines`` is added to the count of ``</s>`` (one per line, as fairseq counts it).
        """
        d = cls()
        for word, count in sorted(word_counts.items()):
            d.add_symbol(word, count)
        d.counts[d.eos_index] += num_lines
        d.finalize(threshold=threshold, nwords=nwords, padding_factor=padding_factor)
        return d

    def finalize(self, threshold: int = -1, nwords: int = -1, padding_factor: int = 8) -> None:
        """Sort words by count (ties by code point), keep ``count >= threshold``, pad (fairseq)."""
        if nwords <= 0:
            nwords = len(self)
        words = sorted(zip(self.symbols[self.nspecial :], self.counts[self.nspecial :]))
        # stable sort by count descending == Counter.most_common on a sorted dict
        ranked = sorted(words, key=lambda wc: wc[1], reverse=True)[: max(nwords - self.nspecial, 0)]
        symbols, counts = self.symbols[: self.nspecial], self.counts[: self.nspecial]
        self.symbols, self.counts = [], []
        self._indices = _IdLookup(unk=self.unk_index)
        for word, count in zip(symbols, counts):
            self.add_symbol(word, count)
        for word, count in ranked:
            if count < threshold:
                break
            self.add_symbol(word, count)
        self.pad_to_multiple(padding_factor)

    def pad_to_multiple(self, padding_factor: int) -> None:
        """Append ``madeupwordNNNN`` (count 0) until ``len(self) % padding_factor == 0``."""
        i = 0
        while padding_factor > 1 and len(self) % padding_factor != 0:
            self.add_symbol(f"madeupword{i:04d}", n=0)
            i += 1

    # ---- dict.txt --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Dictionary:
        """Read a fairseq ``dict.txt`` (``word count [#fairseq:overwrite]`` per line)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"dictionary {path} does not exist: pass the dict.txt written by preprocessing")
        d = cls()
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start}); rewrite it as UTF-8") from err
        for lineno, line in enumerate(text.splitlines(), start=1):
            fields = line.rstrip().rsplit(" ", 1)
            overwrite = len(fields) == 2 and fields[1] == "#fairseq:overwrite"
            if overwrite:
                fields = fields[0].rsplit(" ", 1)
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DataError(f"{path}:{lineno}: malformed dictionary line {line!r}; expected '<word> <count>'")
            word, count = fields[0], int(fields[1])
            if word in d and not overwrite:
                raise DataError(f"{path}:{lineno}: duplicate word {word!r}; remove it or append ' #fairseq:overwrite'")
            d.add_symbol(word, count, overwrite=overwrite)
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write ``dict.txt`` atomically (temp file + rename); specials are implicit, as in fairseq."""
        lines = "".join(f"{w} {c}\n" for w, c in zip(self.symbols[self.nspecial :], self.counts[self.nspecial :]))
        atomic_write_bytes(Path(path), lines.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it, so ``path`` is never half written."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    os.chmod(f.name, 0o666 & ~current_umask())  # mkstemp makes 0600; the user's umask decides, as for open()
    os.replace(f.name, path)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON, written with :func:`atomic_write_bytes` (the tools' ``--json FILE``)."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())
