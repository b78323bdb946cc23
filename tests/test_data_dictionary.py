"""Dictionary: fairseq's ids, tie order, threshold/nwords, padding, dict.txt load/save and its errors."""

from collections import Counter

import numpy as np
import pytest

from adaptive_lm_ds.data.dictionary import Dictionary
from adaptive_lm_ds.data.errors import DataError

TEXT = ["b a c a", "", "d c b a  e", "z y x"]


def _built() -> Dictionary:
    counts = Counter(w for line in TEXT for w in line.split())
    return Dictionary.build(counts, num_lines=len(TEXT), padding_factor=1)


def test_specials_have_fairseq_ids():
    d = Dictionary()
    assert (d.bos(), d.pad(), d.eos(), d.unk()) == (0, 1, 2, 3)
    assert d.symbols == ["<s>", "<pad>", "</s>", "<unk>"]


def test_words_sorted_by_count_then_code_point():
    counts = Counter(w for line in TEXT for w in line.split())
    expected = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    assert _built().symbols[4:] == expected


def test_eos_count_is_number_of_lines():
    assert _built().counts[2] == 1 + len(TEXT)  # 1 from construction, as fairseq's add_symbol(eos)


def test_threshold_keeps_counts_at_least_threshold():
    counts = Counter(w for line in TEXT for w in line.split())
    d = Dictionary.build(counts, len(TEXT), threshold=2, padding_factor=1)
    assert set(d.symbols[4:]) == {w for w, c in counts.items() if c >= 2}


def test_nwords_counts_specials():
    counts = Counter(w for line in TEXT for w in line.split())
    d = Dictionary.build(counts, len(TEXT), nwords=6, padding_factor=1)
    assert len(d) == 6 and d.symbols[4:] == ["a", "b"]


def test_padding_factor_appends_madeupwords_with_count_zero():
    counts = Counter(w for line in TEXT for w in line.split())
    d = Dictionary.build(counts, len(TEXT), padding_factor=8)
    n_real = 4 + len(counts)
    assert len(d) % 8 == 0 and len(d) >= n_real
    assert d.symbols[n_real:] == [f"madeupword{i:04d}" for i in range(len(d) - n_real)]
    assert d.counts[n_real:] == [0] * (len(d) - n_real)


def test_encode_line_maps_unknown_to_unk_and_appends_eos():
    d = _built()
    ids = d.encode_line("  a\tnever-seen b ")
    np.testing.assert_array_equal(ids, [d.symbols.index("a"), 3, d.symbols.index("b"), 2])


def test_save_load_roundtrip(tmp_path):
    d = Dictionary.build(Counter("a b b c".split()), 1, padding_factor=8)
    d.save(tmp_path / "dict.txt")
    loaded = Dictionary.load(tmp_path / "dict.txt")
    assert loaded.symbols == d.symbols and loaded.counts[4:] == d.counts[4:]
    assert not [p for p in tmp_path.iterdir() if p.name != "dict.txt"]  # temp file renamed away


def test_matches_fairseq_dict_of_wikitext2_valid(shared_data, wiki103_tiny_fixture):
    lines = (shared_data / "wikitext-2/valid.txt").read_text(encoding="utf-8").splitlines()
    d = Dictionary.build(Counter(w for line in lines for w in line.split()), len(lines))
    fairseq_words = [line.rsplit(" ", 1)[0] for line in (wiki103_tiny_fixture / "dict.txt").read_text().splitlines()]
    assert d.symbols[4:] == fairseq_words


@pytest.mark.parametrize("content", ["a 1\nb\n", "a 1\nb two\n", "a 1 x\n"])
def test_malformed_dict_line_is_a_clear_error(tmp_path, content):
    (tmp_path / "dict.txt").write_text(content)
    with pytest.raises(DataError, match=r"dict.txt:\d+: malformed"):
        Dictionary.load(tmp_path / "dict.txt")


def test_duplicate_dict_entry_is_a_clear_error(tmp_path):
    (tmp_path / "dict.txt").write_text("a 3\nb 2\na 1\n")
    with pytest.raises(DataError, match=r"dict.txt:3: duplicate word 'a'"):
        Dictionary.load(tmp_path / "dict.txt")


def test_duplicate_with_overwrite_flag_adds_a_new_id_as_fairseq(tmp_path):
    (tmp_path / "dict.txt").write_text("a 3\nb 2\na 1 #fairseq:overwrite\n")
    d = Dictionary.load(tmp_path / "dict.txt")
    assert d.symbols[4:] == ["a", "b", "a"] and d.index("a") == 6


def test_missing_dict_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Dictionary.load(tmp_path / "nope.txt")
