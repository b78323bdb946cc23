"""ZeRO-3 export builds the fp32 weights from what the weights-only loader read: DeepSpeed is never handed a path.

DeepSpeed's ``zero_to_fp32`` globs ``SAVE/TAG/*_model_states.pt`` itself and unpickles with weights-only
loading off, so under a save dir named ``save[1]`` it reads a look-alike sibling ``save1``. The export's
reference is that same ``zero_to_fp32`` merge, run on an untouched copy in a plain path.
"""

import json
import shutil

import pytest
import torch

from adaptive_lm_ds.checkpoint import CheckpointError, load_file
from adaptive_lm_ds.formats.export import consolidate_checkpoint
from adaptive_lm_ds.training.ds_config import load_ds_json

from .checkpoint_runs import run_single, train_args
from .test_checkpoint_safety import Touch

MODEL0 = "zero_pp_rank_0_mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def zero3_save(tiny_run_setup, tmp_path_factory):
    """``ROOT/save[1]`` holding checkpoint_1 of a one-process ZeRO-3 run."""
    data, init = tiny_run_setup
    save = tmp_path_factory.mktemp("zero3") / "save[1]"
    result = run_single(train_args(data, init, save, 1, "--deepspeed_config", "ds_configs/zero3.json"))
    assert result.returncode == 0, result.output[-3000:]
    return save


def zero_to_fp32_reference(save, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    clean = tmp_path / "clean"
    shutil.copytree(save, clean)
    return get_fp32_state_dict_from_zero_checkpoint(str(clean), tag="checkpoint_1")


@pytest.mark.slow
def test_zero3_export_equals_deepspeeds_merge(zero3_save, tmp_path):
    want = zero_to_fp32_reference(zero3_save, tmp_path)
    _, got, _ = consolidate_checkpoint(zero3_save)
    assert set(got) <= set(want)
    for name in got:
        torch.testing.assert_close(got[name], want[name].float(), rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_zero3_export_never_reads_a_look_alike_sibling_folder(zero3_save, tmp_path):
    marker = tmp_path / "ran"
    sibling = zero3_save.with_name("save1")  # what the glob pattern save[1] matches
    shutil.copytree(zero3_save, sibling)
    try:
        state = load_file(sibling / "checkpoint_1" / MODEL0)
        state["evil"] = Touch(marker)
        torch.save(state, sibling / "checkpoint_1" / MODEL0)
        _, got, _ = consolidate_checkpoint(zero3_save)
        assert len(got) > 0 and all(torch.isfinite(got[name]).all() for name in got)
    finally:
        shutil.rmtree(sibling)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"checkpoint": {"load_universal": True}}, "checkpoint.load_universal"),
        ({"datastates_ckpt": {}}, "datastates_ckpt"),
    ],
)
def test_deepspeed_keys_that_load_files_themselves_are_refused(tmp_path, config, key):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, **config}))
    with pytest.raises(CheckpointError, match=rf"sets '{key}', which .*; remove it") as error:
        load_ds_json(str(path))
    assert "\n" not in str(error.value)
    path.write_text(json.dumps({"checkpoint": {"load_universal": False}}))
    assert load_ds_json(str(path))["checkpoint"] == {"load_universal": False}
