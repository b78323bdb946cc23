"""Text -> token ids exactly as ``fairseq-preprocess --only-source`` does it, fast and in parallel.

A line is what Python's universal-newline ``readline`` returns (ends at ``\\n``, ``\\r\\n`` or ``\\r``);
it is split on whitespace (``str.split()``, the same characters as fairseq's ``\\s+``), mapped to ids
(unknown -> ``<unk>``) and ends with ``</s>``. A blank line is one ``</s>``, as in fairseq.

Speed: a file is cut at line ends near fixed byte offsets into chunks (``chunk_bytes``); a chunk is
decoded once, its line ends become a sentinel word, and the whole chunk is split and looked up in one
C-level ``map`` over a dict, then converted with numpy. Chunks are processed by a worker pool and
written in file order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import codecs
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from adaptive_lm_ds.data import fingerprint
from adaptive_lm_ds.data.dictionary import Dictionary, _IdLookup
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.indexed import TokenFileWriter, best_fitting_dtype

CHUNK_BYTES = 8 << 20
_SENTINEL = "\x00"  # line end marker inside a chunk; chunks containing it take the per-line path
_invalid_bytes = [0]


def _count_and_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _invalid_bytes[0] += 1
    return "\ufffd", err.end


codecs.register_error("adaptive_lm_ds.count_replace", _count_and_replace)


@dataclass(frozen=True)
class Chunk:
    """Bytes ``[start, end)`` of ``path``; ``start`` is 0 or just after a ``\\n``."""

    path: str
    start: int
    end: int
    replace_invalid: bool = False


def split_file(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES, replace_invalid: bool = False) -> list[Chunk]:
    """Cut ``path`` into chunks of about ``chunk_bytes`` that end just after a ``\\n``."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"input file {path} does not exist; check --trainpref/--validpref/--testpref")
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + chunk_bytes < size:
            f.seek(bounds[-1] + chunk_bytes)
            f.readline()
            bounds.append(min(f.tell(), size))
    if bounds[-1] < size or size == 0:
        bounds.append(size)
    return [Chunk(path, a, b, replace_invalid) for a, b in zip(bounds[:-1], bounds[1:])]


def read_text(chunk: Chunk) -> tuple[str, int]:
    """Decoded text of a chunk with newlines normalised to ``\\n``; and the count of invalid bytes."""
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        raw = f.read(chunk.end - chunk.start)
    before = _invalid_bytes[0]
    try:
        text = raw.decode("utf-8", "adaptive_lm_ds.count_replace" if chunk.replace_invalid else "strict")
    except UnicodeDecodeError as err:
        line = _count_newlines(chunk.path, chunk.start) + raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{chunk.path}:{line}: invalid UTF-8 byte 0x{raw[err.start]:02x} (byte offset "
            f"{chunk.start + err.start}); fix the file or pass --replace-invalid-utf8 to replace and count"
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, _invalid_bytes[0] - before


def _count_newlines(path: str, end: int) -> int:
    n = 0
    with open(path, "rb") as f:
        while f.tell() < end:
            n += f.read(min(1 << 24, end - f.tell())).count(b"\n")
    return n


def _num_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def has_words(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> bool:
    """Whether the text file holds at least one whitespace-separated word (read until the first one)."""
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            if block.decode("utf-8", "replace").split():
                return True
    return False


def count_chunk(chunk: Chunk) -> tuple[Counter, int, int]:
    """Whitespace-token counts of a chunk, its number of lines, and of invalid bytes replaced."""
    text, invalid = read_text(chunk)
    return Counter(text.split()), _num_lines(text), invalid


@dataclass(frozen=True)
class EncodedChunk:
    ids: np.ndarray  # [tokens] in the file's id dtype, sentences concatenated, each ending in </s>
    sizes: np.ndarray  # int32 [sentences]
    replaced: int  # words not in the dictionary (mapped to <unk>); a literal "<unk>" is not counted
    invalid_bytes: int


class ChunkEncoder:
    """Maps chunks to ids with one dictionary; picklable, so it can be a pool worker's function."""

    def __init__(self, dictionary: Dictionary, dtype: type[np.integer]) -> None:
        self.lookup = dictionary.lookup
        self.eos, self.unk, self.dtype = dictionary.eos(), dictionary.unk(), dtype
        self._with_sentinel: _IdLookup | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_with_sentinel": None}

    def __call__(self, chunk: Chunk) -> EncodedChunk:
        text, invalid = read_text(chunk)
        if text and not text.endswith("\n"):
            text += "\n"
        if _SENTINEL in text or _SENTINEL in self.lookup:
            ids, sizes, replaced = self._encode_lines(text)
        else:
            ids, sizes, replaced = self._encode_bulk(text)
        return EncodedChunk(ids.astype(self.dtype), sizes, replaced, invalid)

    def _encode_bulk(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        if self._with_sentinel is None:
            self._with_sentinel = _IdLookup(self.unk)
            self._with_sentinel.update(self.lookup)
            self._with_sentinel[_SENTINEL] = -1
        lookup = self._with_sentinel
        misses = lookup.misses
        words = text.replace("\n", " \x00 ").split()
        ids = np.fromiter(map(lookup.__getitem__, words), dtype=np.int64, count=len(words))
        ends = np.flatnonzero(ids < 0)
        ids[ends] = self.eos
        sizes = np.diff(ends, prepend=-1).astype(np.int32)
        return ids, sizes, lookup.misses - misses

    def _encode_lines(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        misses, ids, sizes = self.lookup.misses, [], []
        for line in text.split("\n")[:-1]:
            words = line.split()
            ids.extend(map(self.lookup.__getitem__, words))
            ids.append(self.eos)
            sizes.append(len(words) + 1)
        return np.asarray(ids, dtype=np.int64), np.asarray(sizes, dtype=np.int32), self.lookup.misses - misses


def _map_ordered(fn: Callable, chunks: list[Chunk], workers: int) -> Iterator:
    """``map(fn, chunks)`` in order, over a process pool when ``workers > 1``."""
    if workers <= 1 or len(chunks) <= 1:
        yield from map(fn, chunks)
        return
    with get_context("fork").Pool(min(workers, len(chunks))) as pool:
        yield from pool.imap(fn, chunks, chunksize=1)


def build_dictionary(
    paths: list[str],
    workers: int = 1,
    threshold: int = -1,
    nwords: int = -1,
    padding_factor: int = 8,
    replace_invalid: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> Dictionary:
    """fairseq's dictionary of the training text(s) (``fairseq-preprocess`` without ``--srcdict``)."""
    chunks = [c for p in paths for c in split_file(p, chunk_bytes, replace_invalid)]
    counts: Counter = Counter()
    num_lines = 0
    for counter, lines, _ in _map_ordered(count_chunk, chunks, workers):
        counts.update(counter)
        num_lines += lines
    return Dictionary.build(counts, num_lines, threshold, nwords, padding_factor)


@dataclass(frozen=True)
class SplitSummary:
    name: str
    sentences: int
    tokens: int  # ids written, </s> included
    unk: int  # ids equal to <unk> (replaced words and literal "<unk>" tokens)
    replaced: int  # words not in the dictionary
    invalid_bytes: int  # invalid UTF-8 sequences replaced by U+FFFD (--replace-invalid-utf8)
    seconds: float

    def __str__(self) -> str:
        rate = self.unk / max(self.tokens, 1)
        line = (
            f"{self.name}: {self.sentences} sentences, {self.tokens} tokens, {self.unk} <unk> ({rate:.2%}), "
            f"{self.replaced} replaced by <unk>, {self.tokens / max(self.seconds, 1e-9):,.0f} tokens/s"
        )
        return line + (f", {self.invalid_bytes} invalid UTF-8 sequences replaced" if self.invalid_bytes else "")


def binarize_file(
    path: str,
    dictionary: Dictionary,
    prefix: str,
    layout: str = "fairseq",
    workers: int = 1,
    replace_invalid: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = True,
) -> SplitSummary:
    """Write ``prefix.bin``/``prefix.idx`` for the text file ``path`` (atomically) and summarise it.

    ``prefix.dict.json`` records ``dictionary``'s fingerprint, so readers can refuse another dict.txt.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    chunks = split_file(path, chunk_bytes, replace_invalid)
    dtype = best_fitting_dtype(len(dictionary), layout)
    encoder = ChunkEncoder(dictionary, dtype)
    sentences = tokens = unk = replaced = invalid = 0
    name = Path(prefix).name
    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=name, disable=not progress)
    fingerprint.forget(prefix)
    with bar, TokenFileWriter(prefix, dtype, layout) as writer:
        for chunk, enc in zip(chunks, _map_ordered(encoder, chunks, workers)):
            writer.add_chunk(enc.ids, enc.sizes)
            sentences += len(enc.sizes)
            tokens += len(enc.ids)
            unk += int(np.count_nonzero(enc.ids == dictionary.unk()))
            replaced += enc.replaced
            invalid += enc.invalid_bytes
            bar.update(chunk.end - chunk.start)
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):,.0f} tokens/s")
    fingerprint.record(prefix, dictionary)
    return SplitSummary(name, sentences, tokens, unk, replaced, invalid, time.perf_counter() - t0)
