"""Start-up checks: what a machine or a folder cannot do is said in one line before the first step."""

import json
import shutil

import pytest

from adaptive_lm_ds.training.ds_config import TrainConfigError
from adaptive_lm_ds.training.preflight import (
    StartupError,
    check_free_space,
    check_precision,
    check_writable,
    checkpoint_bytes,
    fp16_supported,
)

from .checkpoint_runs import run_single, train_args


def test_fp16_on_a_device_without_it_is_refused_in_one_line():
    with pytest.raises(TrainConfigError, match="does not support") as info:
        check_precision("fp16", fp16_ok=False)
    assert "\n" not in str(info.value) and "bf16" in str(info.value)


def test_fp16_where_supported_and_other_precisions_pass():
    check_precision("fp16", fp16_ok=True)
    check_precision("bf16", fp16_ok=False)
    check_precision("fp32", fp16_ok=False)


def test_the_probe_answers_a_plain_bool():
    assert fp16_supported() in (True, False)


@pytest.mark.slow
@pytest.mark.skipif(fp16_supported(), reason="this CPU supports fp16; the refusal path is unreachable here")
def test_fp16_training_on_a_cpu_without_it_stops_with_one_line(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    ds = tmp_path / "fp16.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 1}, "fp16": {"enabled": True}}))
    result = run_single(train_args(data, init, tmp_path / "save", 1, "--deepspeed_config", ds))
    assert result.returncode == 2
    assert ": error: the DeepSpeed config enables fp16, which this cpu device does not support" in result.output
    assert "Traceback" not in result.output


def test_a_save_dir_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StartupError, match=r"--save-dir .*file/save is not writable"):
        check_writable(tmp_path / "file" / "save", "--save-dir")


def test_a_writable_folder_passes_and_keeps_nothing_of_ours(tmp_path):
    check_writable(tmp_path / "tb", "--tensorboard-logdir")
    assert list((tmp_path / "tb").iterdir()) == []


def test_too_little_free_space_names_the_disk(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(StartupError, match=r"is on disk /\S* with .* free, less than one checkpoint"):
        check_free_space(tmp_path, free * 2)
    check_free_space(tmp_path, 1)


def test_the_checkpoint_size_estimate_matches_a_real_checkpoint(trained_checkpoint):
    """fp32, ZeRO-1, NAG: weights + fp32 master + momentum = 12 bytes a parameter, as saved."""
    from adaptive_lm_ds.checkpoint import read_record

    tag = trained_checkpoint / "checkpoint_2"
    record = read_record(tag)
    estimate = checkpoint_bytes(record.model_config(), "fp32", "nag", 1)
    saved = sum(p.stat().st_size for p in tag.glob("*.pt"))
    assert 0.95 < saved / estimate < 1.1


@pytest.mark.slow
def test_training_into_a_folder_it_cannot_write_stops_before_the_first_update(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    (tmp_path / "file").write_text("not a folder")
    result = run_single(train_args(data, init, tmp_path / "file" / "save", 2))
    assert result.returncode == 2
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "--save-dir" in errors[0] and "is not writable" in errors[0]
    assert '"update": 1' not in result.output and "Traceback" not in result.output
