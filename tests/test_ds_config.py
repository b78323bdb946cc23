"""DeepSpeed JSON + our flags: batch geometry and clipping come from flags; contradictions are refused."""

import json

import pytest

from adaptive_lm_ds.training.config import build_parser, config_from_args
from adaptive_lm_ds.training.ds_config import TrainConfigError, build_ds_config, micro_batch_sequences


def _cfg(*argv):
    return config_from_args(build_parser("t").parse_args(["--data", "d", *argv]))


def test_fairseq_batch_flags_become_deepspeed_batch_sizes():
    cfg = _cfg("--max-tokens", "3072", "--tokens-per-sample", "1024", "--update-freq", "3", "--clip-norm", "0.1")
    ds = build_ds_config(cfg, dp_size=4, pp_size=1)
    assert micro_batch_sequences(cfg) == 3
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 3 * 3 * 4
    assert ds["gradient_clipping"] == 0.1


def test_json_that_contradicts_a_flag_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"gradient_accumulation_steps": 8}))
    cfg = _cfg("--batch-size", "2", "--update-freq", "3", "--deepspeed_config", str(path))
    with pytest.raises(TrainConfigError, match="--update-freq gives 3"):
        build_ds_config(cfg, dp_size=1, pp_size=1)


def test_max_tokens_below_one_sample_is_refused():
    with pytest.raises(TrainConfigError, match="smaller than one sample"):
        micro_batch_sequences(_cfg("--max-tokens", "100", "--tokens-per-sample", "512"))


def test_zero_stage_above_one_with_pipeline_is_refused():
    cfg = _cfg("--batch-size", "2", "--deepspeed_config", "ds_configs/zero2.json")
    with pytest.raises(TrainConfigError, match="does not combine with pipeline"):
        build_ds_config(cfg, dp_size=1, pp_size=2)


def test_missing_or_invalid_json_is_refused(tmp_path):
    with pytest.raises(TrainConfigError, match="does not exist"):
        build_ds_config(_cfg("--batch-size", "1", "--deepspeed_config", str(tmp_path / "no.json")), 1, 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TrainConfigError, match="not valid JSON"):
        build_ds_config(_cfg("--batch-size", "1", "--deepspeed_config", str(bad)), 1, 1)


def test_shipped_configs_are_valid_json():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].glob("ds_configs/*.json"))
    assert len(configs) >= 8
    for path in configs:
        assert "zero_optimization" in json.loads(path.read_text()), path
