"""Memory-mapped token files (MMIDIDX ``.bin``/``.idx``) in fairseq's and megatron-core's layouts.

Both layouts start ``MMIDIDX\\0\\0``, version ``<Q`` = 1, dtype code ``<B``, sequence count ``<Q`` n:

* fairseq:      ``... n | sizes int32[n] | pointers int64[n]``                 (26 + 12 n bytes)
* megatron-core: ``... n | d <Q> | sizes int32[n] | pointers int64[n] | doc_idx int64[d]``
  (34 + 12 n + 8 d bytes, plus ``int8[n]`` modes when multimodal)

The layout is told apart by the file size, which differs for the same n. dtype codes agree on 1-6
and 8 (uint16); code 9 is fairseq's uint32 (GBW's 793k-word vocabulary), code 7 is float64 for
fairseq and float32 for megatron (never valid for token ids). ``.bin`` is the flat token stream:
pointers must be the running byte offsets of the sizes, which is checked on open.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from adaptive_lm_ds.data.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
_HEADER = struct.Struct("<9sQBQ")  # magic, version, dtype code, sequence count: 26 bytes
_INT_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
FAIRSEQ_CODES = {**_INT_CODES, 9: np.uint32, 10: np.uint64}
MEGATRON_CODES = dict(_INT_CODES)
LAYOUTS = ("fairseq", "megatron")


def best_fitting_dtype(vocab_size: int, layout: str = "fairseq") -> type[np.integer]:
    """Smallest id dtype as each tool picks it (uint16 below 65,500 entries; then uint32 or int32)."""
    if vocab_size < 65500:
        return np.uint16
    if layout == "megatron":  # megatron-core's DType.optimal_dtype has no uint32
        return np.int32
    return np.uint32 if vocab_size < 4294967295 else np.int64


def _code_of(dtype: type[np.integer], layout: str) -> int:
    codes = FAIRSEQ_CODES if layout == "fairseq" else MEGATRON_CODES
    for code, dt in codes.items():
        if np.dtype(dt) == np.dtype(dtype):
            return code
    raise DataError(f"dtype {np.dtype(dtype)} cannot be stored in the {layout} layout")


class IndexedTokens:
    """Read-only view of ``PREFIX.bin``/``PREFIX.idx`` (either layout), memory-mapped, validated on open.

    ``sizes`` int32[n] (tokens per sentence), ``get(i)`` ids of sentence i, ``read(a, b)`` tokens
    ``[a, b)`` of the flat stream (int64), ``sentence_offsets`` int64[n+1] (running token offsets).
    """

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.prefix = str(prefix)
        idx_path, bin_path = Path(self.prefix + ".idx"), Path(self.prefix + ".bin")
        for p in (idx_path, bin_path):
            if not p.is_file():
                raise DataError(f"{p} does not exist: give the data-bin prefix, e.g. DIR/train for DIR/train.bin")
        idx_size = idx_path.stat().st_size
        with open(idx_path, "rb") as f:
            head = f.read(34)
        if len(head) < _HEADER.size or head[:9] != MAGIC:
            raise DataError(f"{idx_path} is not an MMIDIDX index (bad header); re-run adaptive-lm-preprocess")
        _, version, code, n = _HEADER.unpack_from(head)
        if version != 1:
            raise DataError(f"{idx_path}: unsupported MMIDIDX version {version} (expected 1)")
        self.layout, num_docs = self._detect_layout(idx_path, idx_size, head, n)
        codes = FAIRSEQ_CODES if self.layout == "fairseq" else MEGATRON_CODES
        if code not in codes:
            raise DataError(f"{idx_path}: dtype code {code} is not an integer token dtype of the {self.layout} layout")
        self.dtype = np.dtype(codes[code])
        sizes_at = _HEADER.size + (8 if self.layout == "megatron" else 0)
        self.sizes = _memmap(idx_path, np.int32, sizes_at, n)
        self.pointers = _memmap(idx_path, np.int64, sizes_at + 4 * n, n)
        self.doc_index = _memmap(idx_path, np.int64, sizes_at + 12 * n, num_docs) if num_docs else None
        self._check_consistent(idx_path, bin_path)
        self.tokens = _memmap(bin_path, self.dtype, 0, self.num_tokens)

    @staticmethod
    def _detect_layout(idx_path: Path, idx_size: int, head: bytes, n: int) -> tuple[str, int]:
        if idx_size == _HEADER.size + 12 * n:
            return "fairseq", 0
        if len(head) >= 34:
            (d,) = struct.unpack_from("<Q", head, 26)
            if idx_size in (34 + 12 * n + 8 * d, 34 + 13 * n + 8 * d):  # megatron, optional modes
                return "megatron", d
        raise DataError(
            f"{idx_path}: {idx_size} bytes do not match {n} sequences in the fairseq or megatron-core "
            "layout (truncated or corrupt); re-run adaptive-lm-preprocess"
        )

    def _check_consistent(self, idx_path: Path, bin_path: Path) -> None:
        n = len(self.sizes)
        if n and int(self.sizes.min()) < 0:
            raise DataError(f"{idx_path}: negative sequence sizes; the index is corrupt")
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=offsets[1:])
        if not np.array_equal(self.pointers, offsets[:-1] * self.dtype.itemsize):
            raise DataError(
                f"{idx_path}: pointers are not the running byte offsets of the sizes (corrupt, or "
                "not a flat token stream); re-run adaptive-lm-preprocess"
            )
        self.sentence_offsets = offsets
        self.num_tokens = int(offsets[-1])
        expected = self.num_tokens * self.dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise DataError(
                f"{bin_path} has {bin_path.stat().st_size} bytes but {idx_path.name} describes "
                f"{self.num_tokens} {self.dtype} tokens ({expected} bytes): truncated or mismatched pair"
            )
        if self.doc_index is not None:
            doc = self.doc_index
            if doc[0] != 0 or doc[-1] != n or np.any(np.diff(doc) < 0):
                raise DataError(f"{idx_path}: document index is not increasing from 0 to {n}; the index is corrupt")

    def __len__(self) -> int:
        return len(self.sizes)

    def get(self, i: int) -> np.ndarray:
        """Ids of sentence ``i`` as int64 (a copy; the file stays on disk)."""
        return self.read(int(self.sentence_offsets[i]), int(self.sentence_offsets[i + 1]))

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens ``[start, end)`` of the flat stream as int64."""
        return self.tokens[start:end].astype(np.int64)

    def max_token_id(self, chunk: int = 1 << 24) -> int:
        """Largest id in the file (streamed in chunks, so RAM stays small); -1 when empty."""
        best = -1
        for a in range(0, self.num_tokens, chunk):
            best = max(best, int(self.tokens[a : a + chunk].max()))
        return best

    def check_ids(self, vocab_size: int) -> None:
        """Raise ``DataError`` when an id is >= ``vocab_size`` (data made with another dictionary)."""
        top = self.max_token_id()
        if top >= vocab_size:
            raise DataError(
                f"{self.prefix}.bin holds token id {top} but the dictionary has {vocab_size} entries: "
                "the data-bin was made with another dict.txt; re-run preprocessing with --srcdict"
            )


def _memmap(path: Path, dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def write_fairseq_index(path: str | os.PathLike, sizes: np.ndarray, dtype) -> None:
    """fairseq's ``.idx`` for sentences of ``sizes`` tokens (byte-identical to fairseq's writer)."""
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=pointers[1:])
    pointers *= np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, 1, _code_of(dtype, "fairseq"), len(sizes)))
        f.write(sizes.tobytes())
        f.write(pointers.tobytes())


class TokenFileWriter:
    """Writes ``PREFIX.bin``/``PREFIX.idx`` under temp names, renamed by ``finalize`` (atomic).

    fairseq layout: written here byte-identically to fairseq's ``MMapIndexedDatasetBuilder``.
    megatron layout: written by megatron-core's ``IndexedDatasetBuilder``, one document per sentence
    (as megatron's preprocess_data.py does for one-line documents).
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type[np.integer], layout: str = "fairseq") -> None:
        if layout not in LAYOUTS:
            raise DataError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        self.prefix, self.layout, self.dtype = str(prefix), layout, np.dtype(dtype)
        _code_of(dtype, layout)
        tag = f".tmp-{os.getpid()}"
        self._tmp_bin, self._tmp_idx = self.prefix + ".bin" + tag, self.prefix + ".idx" + tag
        self._sizes: list[np.ndarray] = []
        if layout == "megatron":
            from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

            self._builder = IndexedDatasetBuilder(self._tmp_bin, dtype=self.dtype.type)
        else:
            self._bin = open(self._tmp_bin, "wb")

    def add_chunk(self, ids: np.ndarray, sizes: np.ndarray) -> None:
        """Append sentences: ``ids`` is their concatenation, ``sizes`` their lengths (sum == len(ids))."""
        assert int(np.sum(sizes)) == len(ids), "sizes must add up to the number of ids"
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        if self.layout == "megatron":
            b = self._builder
            start = len(b.sequence_lengths)
            b.add_document(ids, [int(s) for s in sizes])
            b.document_indices[-1:] = range(start + 1, start + len(sizes) + 1)
        else:
            self._bin.write(ids.tobytes())
        self._sizes.append(np.asarray(sizes, dtype=np.int32))

    def finalize(self) -> None:
        """Write the index and rename both files to their final names."""
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int32)
        if self.layout == "megatron":
            self._builder.finalize(self._tmp_idx)
        else:
            self._bin.close()
            write_fairseq_index(self._tmp_idx, sizes, self.dtype)
        os.replace(self._tmp_bin, self.prefix + ".bin")
        os.replace(self._tmp_idx, self.prefix + ".idx")

    def abort(self) -> None:
        """Remove the temp files (after an error); final names are never touched."""
        if self.layout == "fairseq":
            self._bin.close()
        else:
            self._builder.data_file.close()
        for p in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
