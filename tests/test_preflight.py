"""Start-up checks: what a machine or a folder cannot do is said in one line before the first step."""

import json
import sys

import pytest

from adaptive_lm_ds.testing.distributed import REPO_ROOT, free_port, launch, rank_env
from adaptive_lm_ds.training.ds_config import ConfigError
from adaptive_lm_ds.training.preflight import check_precision, fp16_supported

LAUNCHER = REPO_ROOT / "launchers" / "train_wiki103.py"


def test_fp16_on_a_device_without_it_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="does not support") as info:
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
    args = ["--data", data, "--init-from", init, "--tokens-per-sample", "32", "--batch-size", "2", "--max-update", "1",
            "--save-dir", tmp_path / "save", "--deepspeed_config", ds]  # fmt: skip
    result = launch(
        [sys.executable, str(LAUNCHER), *map(str, args)], timeout=180, env=rank_env({"MASTER_PORT": str(free_port())})
    )
    assert result.returncode == 2
    assert "error: the DeepSpeed config enables fp16, which this cpu device does not support" in result.output
    assert "Traceback" not in result.output
