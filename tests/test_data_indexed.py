"""IndexedTokens: reads fairseq's real files back to the text's tokens; corrupt pairs fail on open."""

import shutil

import numpy as np
import pytest

from adaptive_lm_ds.data.blocks import build_lm_dataset
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.indexed import IndexedTokens, TokenFileWriter


def test_reads_fairseq_files_back_to_the_text(shared_data, wiki103_tiny_fixture):
    words = [line.rsplit(" ", 1)[0] for line in (wiki103_tiny_fixture / "dict.txt").read_text().splitlines()]
    ids = {w: i + 4 for i, w in enumerate(words)}
    ids["<unk>"] = 3
    lines = (shared_data / "wikitext-2/test.txt").read_text(encoding="utf-8").split("\n")[:-1]
    data = IndexedTokens(wiki103_tiny_fixture / "data-bin/test")
    assert data.layout == "fairseq" and data.dtype == np.uint16 and len(data) == len(lines)
    np.testing.assert_array_equal(data.sizes, [len(line.split()) + 1 for line in lines])
    for i in range(0, len(lines), 97):
        assert data.get(i).tolist() == [ids.get(w, 3) for w in lines[i].split()] + [2]


def _pair(tmp_path, name="d"):
    with TokenFileWriter(tmp_path / name, np.uint16) as w:
        w.add_chunk(np.arange(10), np.array([3, 0, 7]))
    return tmp_path / name


def test_writer_roundtrip(tmp_path):
    data = IndexedTokens(_pair(tmp_path))
    assert [data.get(i).tolist() for i in range(3)] == [[0, 1, 2], [], [3, 4, 5, 6, 7, 8, 9]]


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="d.idx does not exist"):
        IndexedTokens(tmp_path / "d")


@pytest.mark.parametrize(
    "suffix, keep_bytes, message",
    [(".bin", 12, "truncated or mismatched"), (".idx", 40, "truncated or corrupt")],
)
def test_truncated_file_detected_on_open(tmp_path, suffix, keep_bytes, message):
    prefix = _pair(tmp_path)
    with open(f"{prefix}{suffix}", "r+b") as f:
        f.truncate(keep_bytes)
    with pytest.raises(DataError, match=message):
        IndexedTokens(prefix)


def test_mismatched_pair_detected_on_open(tmp_path):
    prefix = _pair(tmp_path)
    with TokenFileWriter(tmp_path / "other", np.uint16) as w:
        w.add_chunk(np.arange(12), np.array([12]))
    shutil.copy(tmp_path / "other.bin", f"{prefix}.bin")
    with pytest.raises(DataError, match="truncated or mismatched"):
        IndexedTokens(prefix)


def test_bad_magic_detected_on_open(tmp_path):
    prefix = _pair(tmp_path)
    with open(f"{prefix}.idx", "r+b") as f:
        f.write(b"NOTANIDX!")
    with pytest.raises(DataError, match="not an MMIDIDX"):
        IndexedTokens(prefix)


def test_token_ids_beyond_dictionary_are_refused(tmp_path):
    (tmp_path / "dict.txt").write_text("a 1\nb 1\nc 1\nd 1\n")  # 8 ids
    with TokenFileWriter(tmp_path / "train", np.uint16) as w:
        w.add_chunk(np.array([4, 5, 8, 2]), np.array([4]))
    with pytest.raises(DataError, match="token id 8 but the dictionary has 8 entries"):
        build_lm_dataset(tmp_path, "train", tokens_per_sample=4)
