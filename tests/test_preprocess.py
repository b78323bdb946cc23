"""tools/preprocess_data.py: byte-identical to fairseq-preprocess, worker-count invariance, bad input."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from adaptive_lm_ds.commands import preprocess_data
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.indexed import IndexedTokens

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    preprocess_data.main([*args, "--no-progress"])


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_byte_identical_to_fairseq_preprocess(tmp_path, shared_data, wiki103_tiny_fixture):
    text = shared_data / "wikitext-2"
    out = tmp_path / "bin"
    run("--trainpref", str(text / "valid.txt"), "--validpref", str(text / "test.txt"),
        "--testpref", str(text / "test.txt"), "--destdir", str(out))  # fmt: skip
    assert (out / "dict.txt").read_bytes() == (wiki103_tiny_fixture / "dict.txt").read_bytes()
    for name in ("test.bin", "test.idx"):
        assert (out / name).read_bytes() == (wiki103_tiny_fixture / "data-bin" / name).read_bytes()


def test_output_identical_for_any_worker_count_and_chunking(tmp_path, shared_data):
    text = shared_data / "wikitext-2"
    outs = []
    for workers, chunk in ((1, 1 << 23), (2, 50_000), (3, 7_777)):
        out = tmp_path / f"w{workers}"
        run("--trainpref", str(text / "valid.txt"), "--testpref", str(text / "test.txt"),
            "--destdir", str(out), "--workers", str(workers), "--chunk-bytes", str(chunk))  # fmt: skip
        outs.append([(out / n).read_bytes() for n in ("dict.txt", "test.bin", "test.idx", "train.bin")])
    assert outs[0] == outs[1] == outs[2]


def test_ids_and_counts_match_an_independent_tokenisation(tmp_path):
    lines = ["the cat sat", "", "the  dog\tsat down", "a cat", "", "the end"]
    src = write(tmp_path / "t.txt", ("\n".join(lines) + "\n").encode())
    run("--trainpref", str(src), "--destdir", str(tmp_path / "bin"), "--padding-factor", "1")
    words = [line.rsplit(" ", 1) for line in (tmp_path / "bin/dict.txt").read_text().splitlines()]
    counts = Counter(w for line in lines for w in line.split())
    assert {w: int(c) for w, c in words} == dict(counts)
    ids = {w: i + 4 for i, (w, _) in enumerate(words)}
    data = IndexedTokens(tmp_path / "bin/train")
    assert len(data) == len(lines)  # blank lines are kept, as fairseq does
    for i, line in enumerate(lines):
        np.testing.assert_array_equal(data.get(i), [ids[w] for w in line.split()] + [2])


def test_blank_line_is_a_single_eos_and_crlf_is_a_line_end(tmp_path):
    src = write(tmp_path / "t.txt", b"a b\r\n\r\nb\rc")  # last line without newline
    run("--trainpref", str(src), "--destdir", str(tmp_path / "bin"))
    words = [line.split(" ")[0] for line in (tmp_path / "bin/dict.txt").read_text().splitlines()]
    a, b, c = (words.index(w) + 4 for w in "abc")
    data = IndexedTokens(tmp_path / "bin/train")
    assert [data.get(i).tolist() for i in range(len(data))] == [[a, b, 2], [2], [b, 2], [c, 2]]


def test_srcdict_maps_unknown_words_to_unk(tmp_path):
    (tmp_path / "dict.txt").write_text("x 5\ny 1\n")
    src = write(tmp_path / "t.txt", b"y q x <unk>\n")
    run("--srcdict", str(tmp_path / "dict.txt"), "--testpref", str(src), "--destdir", str(tmp_path / "bin"))
    assert IndexedTokens(tmp_path / "bin/test").get(0).tolist() == [5, 3, 4, 3, 2]


def test_large_vocabulary_uses_fairseq_uint32(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    src = write(tmp_path / "t.txt", (" ".join(words) + "\n").encode())
    run("--trainpref", str(src), "--destdir", str(tmp_path / "bin"))
    data = IndexedTokens(tmp_path / "bin/train")
    assert data.dtype == np.uint32 and data.layout == "fairseq"
    ids = data.get(0)
    assert ids.max() == 70_000 + 3 and len(ids) == 70_001


def test_megatron_layout_is_read_by_megatron_core_and_by_us(tmp_path, shared_data):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = shared_data / "ptb/valid.txt"
    run("--trainpref", str(src), "--destdir", str(tmp_path / "fs"))
    run(
        "--trainpref",
        str(src),
        "--destdir",
        str(tmp_path / "mg"),
        "--dataset-impl",
        "megatron",
        "--chunk-bytes",
        "9999",
    )
    ours, fairseq_layout = IndexedTokens(tmp_path / "mg/train"), IndexedTokens(tmp_path / "fs/train")
    theirs = IndexedDataset(str(tmp_path / "mg/train"))
    assert ours.layout == "megatron" and fairseq_layout.layout == "fairseq"
    assert len(theirs) == len(ours) == len(fairseq_layout) == len(src.read_text().splitlines())
    np.testing.assert_array_equal(theirs.document_indices, np.arange(len(ours) + 1))
    for i in (0, 1, len(ours) // 2, len(ours) - 1):
        np.testing.assert_array_equal(theirs[i], ours.get(i))
        np.testing.assert_array_equal(ours.get(i), fairseq_layout.get(i))


def test_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="nope.txt does not exist"):
        run("--trainpref", str(tmp_path / "nope.txt"), "--destdir", str(tmp_path / "bin"))


def test_invalid_utf8_names_file_and_line(tmp_path):
    src = write(tmp_path / "t.txt", b"ok line\nanother\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"t.txt:3: invalid UTF-8 byte 0xff"):
        run("--trainpref", str(src), "--destdir", str(tmp_path / "bin"))


def test_invalid_utf8_replaced_and_counted_on_request(tmp_path, capsys):
    src = write(tmp_path / "t.txt", b"a \xff\xfe b\nc \xc3\n")
    run("--trainpref", str(src), "--destdir", str(tmp_path / "bin"), "--replace-invalid-utf8")
    words = [line.rsplit(" ", 1)[0] for line in (tmp_path / "bin/dict.txt").read_text().splitlines()]
    assert "\ufffd\ufffd" in words and "\ufffd" in words
    assert "3 invalid UTF-8 sequences replaced" in capsys.readouterr().err


def test_failed_run_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    from adaptive_lm_ds.data import preprocess

    def crash(self, chunk):
        raise RuntimeError("killed")

    src = write(tmp_path / "t.txt", b"a b\n" * 1000)
    monkeypatch.setattr(preprocess.ChunkEncoder, "__call__", crash)
    with pytest.raises(RuntimeError):
        run("--trainpref", str(src), "--destdir", str(tmp_path / "bin"))
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["dict.txt"]


def test_cli_exits_nonzero_with_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/preprocess_data.py", "--trainpref", str(tmp_path / "x.txt"),
         "--destdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"adaptive-lm-preprocess: error: "
                                                 f"input file {tmp_path / 'x.txt'} does not exist; "
                                                 "check --trainpref/--validpref/--testpref"]  # fmt: skip
