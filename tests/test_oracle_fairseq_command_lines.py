"""fairseq-preprocess and fairseq-eval-lm command lines, given unchanged to our programs and to the oracle.

Preprocess: the same files byte for byte (dict.txt, SPLIT.bin, SPLIT.idx; fairseq's preprocess.log aside).
Eval: the same perplexity (relative 1e-5; 5e-4 with ``--fp16``), the same ``--output-word-probs`` lines
(same ids, same words, log-probs within 1e-5: the two models' fp32 arithmetic differs in the last bits,
so the sixth decimal of a few hundred values in thousands differs by one) and the same
``--output-word-stats`` lines (same words, counts and flags in the same order; sums within 1e-4).
fairseq's side is ``fairseq_cli.eval_lm.main``
through tests/oracle_scripts/eval_lm_json.py, the console script's own parsing path.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from adaptive_lm_ds.commands import eval_lm, preprocess_data
from tests.oracle import FIXTURE_A, SCRIPTS, SHARED, shared_or_skip

EVAL_FLAGS = [
    "--path", str(FIXTURE_A / "checkpoint.pt"), "--task", "language_modeling", "--gen-subset", "test",
    "--tokens-per-sample", "128", "--context-window", "64", "--max-sentences", "3", "--softmax-batch", "100",
    "--output-word-probs", "--output-word-stats", "--cpu", "--num-workers", "0",
]  # fmt: skip
PIECES = {"the", "of", "@-@", "and"}  # words renamed to subword pieces ("the@@") for --remove-bpe
LOG = re.compile(r"fairseq_cli\.eval_lm(?::| \| )(.*)")


def subword_data_bin(data_bin: Path, root: Path) -> Path:
    """``data_bin`` with some dictionary entries renamed ``WORD@@``: the same ids, now read as BPE pieces."""
    out = root / "bpe-data-bin"
    out.mkdir()
    for name in ("test.bin", "test.idx"):
        shutil.copy(data_bin / name, out / name)
    lines = []
    for line in (data_bin / "dict.txt").read_text(encoding="utf-8").splitlines():
        word, count = line.rsplit(" ", 1)
        lines.append(f"{word}@@ {count}" if word in PIECES else line)
    (out / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def command_lines(oracle_data_bin, tmp_path_factory) -> dict[str, list[str]]:
    bpe = subword_data_bin(oracle_data_bin, tmp_path_factory.mktemp("bpe"))
    fp16 = [str(oracle_data_bin), "--path", str(FIXTURE_A / "checkpoint.pt"), "--tokens-per-sample", "128", "--fp16"]
    return {
        "words": [str(oracle_data_bin), *EVAL_FLAGS],
        "bpe": [str(bpe), *EVAL_FLAGS, "--remove-bpe", "@@ "],
        "fp16": [*fp16, "--cpu"],
    }


@pytest.fixture(scope="module")
def fairseq_runs(fairseq_oracle, command_lines, tmp_path_factory) -> dict[str, tuple[list[str], dict]]:
    """Per command line: fairseq-eval-lm's logged messages and its full-precision loss and perplexity."""
    root = tmp_path_factory.mktemp("oracle-eval-lines")
    runs = {}
    for name, argv in command_lines.items():
        (root / "runs.json").write_text(json.dumps({name: argv}))
        output = fairseq_oracle.run("python", SCRIPTS / "eval_lm_json.py", root / "out.json", root / "runs.json")
        messages = [m.group(1) for line in output.splitlines() if (m := LOG.search(line))]
        runs[name] = messages, json.loads((root / "out.json").read_text())[name]
    return runs


def word_prob_lines(lines: list[str]) -> list[tuple[int, list[tuple[str, float]]]]:
    out = []
    for line in lines:
        if re.match(r"^\d+ \S.* \[-?[\d.]+\]", line):
            sample_id, rest = line.split(" ", 1)
            pairs = [item.rsplit(" [", 1) for item in rest.split("\t")]
            out.append((int(sample_id), [(w, float(p.rstrip("]"))) for w, p in pairs]))
    return out


def word_stat_lines(lines: list[str]) -> list[list[str]]:
    return [f for f in (line.split("\t") for line in lines) if len(f) == 6 and f[3] in ("True", "False")]


@pytest.fixture(scope="module")
def our_runs(command_lines, tmp_path_factory) -> dict[str, tuple[list[str], dict]]:
    import contextlib
    import io

    root = tmp_path_factory.mktemp("our-eval-lines")
    runs = {}
    for name, argv in command_lines.items():
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            eval_lm.main([*argv, "--json", str(root / f"{name}.json")])
        runs[name] = stdout.getvalue().splitlines(), json.loads((root / f"{name}.json").read_text())
    return runs


@pytest.mark.parametrize("name, rel", [("words", 1e-5), ("bpe", 1e-5), ("fp16", 5e-4)])
def test_eval_lm_perplexity_equals_fairseqs(name, rel, fairseq_runs, our_runs):
    """fp16: both run the model in float16, whose rounding differs between the two implementations."""
    ours, theirs = our_runs[name][1], fairseq_runs[name][1]
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=rel)
    assert ours["loss_base2"] == pytest.approx(theirs["loss_base2"], rel=rel)


@pytest.mark.parametrize("name", ["words", "bpe"])
def test_eval_lm_word_prob_lines_equal_fairseqs(name, fairseq_runs, our_runs):
    ours, theirs = word_prob_lines(our_runs[name][0]), word_prob_lines(fairseq_runs[name][0])
    assert len(theirs) > 50 and [i for i, _ in ours] == [i for i, _ in theirs]
    for (_, mine), (_, fairseq) in zip(ours, theirs):
        assert [w for w, _ in mine] == [w for w, _ in fairseq]
        assert max(abs(a - b) for (_, a), (_, b) in zip(mine, fairseq)) <= 1e-5
    if name == "bpe":  # pieces were glued into words: "the@@" + "game" is printed as "thegame"
        assert any(w.startswith("the") and w != "the" for _, words in ours for w, _ in words)


@pytest.mark.parametrize("name", ["words", "bpe"])
def test_eval_lm_word_stat_lines_equal_fairseqs(name, fairseq_runs, our_runs):
    ours, theirs = word_stat_lines(our_runs[name][0]), word_stat_lines(fairseq_runs[name][0])
    assert len(theirs) > 100
    assert [(f[0], f[1], f[3], f[5]) for f in ours] == [(f[0], f[1], f[3], f[5]) for f in theirs]
    for mine, fairseq in zip(ours, theirs):
        assert float(mine[2]) == pytest.approx(float(fairseq[2]), rel=1e-5, abs=1e-4)
        assert float(mine[4]) == pytest.approx(float(fairseq[4]), rel=1e-5, abs=1e-4)
    if name == "bpe":
        assert any(f[3] == "True" for f in ours)


def test_fairseq_preprocess_command_line_gives_the_same_files(fairseq_oracle, tmp_path):
    text = shared_or_skip(SHARED / "data" / "wikitext-2")
    slices = (("train", "valid", 0, 600), ("valid", "test", 0, 100), ("test", "test", 100, 150))
    for split, source, first, count in slices:
        lines = (text / f"{source}.txt").read_text(encoding="utf-8").splitlines(keepends=True)[first : first + count]
        (tmp_path / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    flags = ["--only-source", "--task", "language_modeling", "--trainpref", tmp_path / "train.txt",
             "--validpref", tmp_path / "valid.txt", "--testpref", tmp_path / "test.txt", "--workers", "2"]  # fmt: skip
    fairseq_oracle.run("fairseq-preprocess", *flags, "--destdir", tmp_path / "fairseq")
    preprocess_data.main([*map(str, flags), "--destdir", str(tmp_path / "ours")])
    written = sorted(p.name for p in (tmp_path / "fairseq").iterdir() if p.name != "preprocess.log")
    assert written == ["dict.txt", "test.bin", "test.idx", "train.bin", "train.idx", "valid.bin", "valid.idx"]
    for name in written:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "fairseq" / name).read_bytes(), name
