"""A data-bin knows its dictionary: another dict.txt is refused by training, eval and conversion;
an empty training text and a block longer than the model's positions are refused up front."""

import os
import shutil
import subprocess
import sys

import pytest

from adaptive_lm_ds.commands import convert_fairseq_ckpt, eval_lm, preprocess_data
from adaptive_lm_ds.data import DataError, Dictionary, build_lm_dataset
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.testing.distributed import free_port
from tests.oracle import REPO


def _foreign(dictionary: Dictionary, extra: int) -> Dictionary:
    """A dictionary of another corpus: the same words in another order, plus ``extra`` more."""
    other = Dictionary()
    for word in [*reversed(dictionary.symbols[dictionary.nspecial :]), *(f"other{i}" for i in range(extra))]:
        other.add_symbol(word)
    return other


@pytest.fixture
def data_copy(tiny_run_setup, tmp_path):
    data, _ = tiny_run_setup
    return shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns("text"))


def test_a_larger_dictionary_of_another_corpus_is_refused(data_copy):
    # the id-range check cannot see this one: every id of the .bin is inside the larger dictionary
    own = Dictionary.load(data_copy / "dict.txt")
    _foreign(own, extra=64).save(data_copy / "dict.txt")
    with pytest.raises(DataError, match="is not the dictionary .*train.bin was made with"):
        build_lm_dataset(data_copy, "train", 32)


def test_own_dictionary_is_accepted_and_an_old_data_bin_only_warns(data_copy, caplog):
    assert len(build_lm_dataset(data_copy, "valid", 32)) > 0
    assert caplog.records == []
    (data_copy / "valid.dict.json").unlink()  # as made before fingerprints, or by fairseq
    assert len(build_lm_dataset(data_copy, "valid", 32)) > 0
    [warning] = caplog.records
    assert warning.levelname == "WARNING" and "no dictionary fingerprint" in warning.getMessage()


def test_preprocessing_records_the_dictionary_of_every_split(tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("a b c\nb c\n")
    (tmp_path / "valid.txt").write_text("c a\n")
    preprocess_data.main(["--trainpref", str(text), "--validpref", str(tmp_path / "valid.txt"),
                          "--destdir", str(tmp_path / "bin"), "--no-progress"])  # fmt: skip
    assert {p.name for p in (tmp_path / "bin").glob("*.dict.json")} == {"train.dict.json", "valid.dict.json"}
    Dictionary.load(tmp_path / "bin" / "dict.txt").save(tmp_path / "bin" / "dict.txt")  # same words: still fine
    build_lm_dataset(tmp_path / "bin", "valid", 4)
    with_extra = Dictionary.load(tmp_path / "bin" / "dict.txt")
    with_extra.add_symbol("zzz")
    with_extra.save(tmp_path / "bin" / "dict.txt")
    with pytest.raises(DataError, match="valid.bin was made with"):
        build_lm_dataset(tmp_path / "bin", "valid", 4)


def test_eval_refuses_a_dictionary_of_another_corpus(data_copy, tiny_run_setup):
    _, init = tiny_run_setup
    own = Dictionary.load(data_copy / "dict.txt")
    _foreign(own, extra=0).save(data_copy / "dict.txt")  # same size as the model's vocabulary
    with pytest.raises(UserError, match="is not the dictionary"):
        eval_lm.main(["--path", str(init), "--data", str(data_copy), "--gen-subset", "valid",
                      "--tokens-per-sample", "32", "--max-samples", "2"])  # fmt: skip


def test_conversion_refuses_a_data_bin_dictionary_its_splits_were_not_made_with(data_copy, tiny_run_setup, tmp_path):
    _, init = tiny_run_setup
    pt = tmp_path / "model.pt"
    convert_fairseq_ckpt.main(["--to-fairseq", "--input", str(init), "--output", str(pt)])
    _foreign(Dictionary.load(data_copy / "dict.txt"), extra=0).save(data_copy / "dict.txt")
    with pytest.raises(UserError, match="is not the dictionary"):
        convert_fairseq_ckpt.main(["--input", str(pt), "--dict", str(data_copy / "dict.txt"),
                                   "--output", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_empty_training_text_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "train.txt").write_text("\n  \n\t\n")
    proc = subprocess.run(
        [sys.executable, "tools/preprocess_data.py", "--trainpref", str(tmp_path / "train.txt"),
         "--destdir", str(tmp_path / "bin")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"adaptive-lm-preprocess: error: training text {tmp_path / 'train.txt'} has no words "
        "(empty or only whitespace); check --trainpref"
    ]
    assert not (tmp_path / "bin").exists()


def _train(data, *flags):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port())}
    cmd = [sys.executable, "launchers/train_wiki103.py", "--data", str(data), "--preset", "tiny", "--no-save",
           "--max-update", "1", "--deepspeed_config", "ds_configs/zero1.json", *flags]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if ": error: " in line or line.startswith("Traceback")]


def test_training_refuses_a_block_longer_than_the_model_positions(tiny_run_setup):
    data, _ = tiny_run_setup  # the tiny preset has 1024 positions
    proc = _train(data, "--tokens-per-sample", "2048", "--max-tokens", "2048")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _error_lines(proc) == [
        "adaptive-lm-train-wiki103: error: --tokens-per-sample 2048 exceeds the model's 1024 positions; "
        "use --tokens-per-sample 1024 or less"
    ]


def test_training_refuses_a_dictionary_of_another_corpus(data_copy):
    foreign = _foreign(Dictionary.load(data_copy / "dict.txt"), extra=64)
    foreign.save(data_copy / "dict.txt")
    proc = _train(data_copy, "--tokens-per-sample", "32", "--max-tokens", "128")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    [line] = _error_lines(proc)
    assert f"dict.txt ({len(foreign)} types) is not the dictionary" in line
