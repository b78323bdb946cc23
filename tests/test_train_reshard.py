"""Any layout <-> one consolidated model: export TP2xPP2, continue at TP1 and back with equal losses;
and a converted fairseq checkpoint fine-tunes at TP2xPP2."""

import json
import math
import shutil
import subprocess
import sys

import pytest

from adaptive_lm_ds.testing import run_on_ranks
from tests.oracle import REPO

from .training_runs import train_on_rank


def _argv(data, *extra):
    return [
        "--data", str(data), "--tokens-per-sample", "32", "--batch-size", "4", "--lr", "0.1",
        "--lr-scheduler", "fixed", "--warmup-updates", "0", "--validate-interval-updates", "0",
        "--max-valid-steps", "4", "--log-interval", "100", *extra,
    ]  # fmt: skip


TP2_PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
           "--deepspeed_config", "ds_configs/pipeline_zero1.json"]  # fmt: skip


def _export(checkpoint, output):
    cmd = [sys.executable, "tools/export_checkpoint.py", "--checkpoint", str(checkpoint), "--output", str(output)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)


@pytest.mark.slow
def test_tp2pp2_to_tp1_and_back_keeps_the_loss(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    trained = run_on_ranks(
        train_on_rank, nprocs=4, timeout=300,
        argv=_argv(data, "--init-from", str(init), "--max-update", "4",
                   "--save-dir", str(tmp_path / "save"), *TP2_PP2),
    )[0]["summary"]["valid_loss_base2"]  # fmt: skip
    _export(tmp_path / "save", tmp_path / "exported")
    evaluate = ["--init-from", str(tmp_path / "exported"), "--max-update", "0", "--no-save"]
    tp1 = run_on_ranks(
        train_on_rank, nprocs=1, argv=_argv(data, *evaluate, "--deepspeed_config", "ds_configs/zero1.json")
    )
    back = run_on_ranks(train_on_rank, nprocs=4, timeout=300, argv=_argv(data, *evaluate, *TP2_PP2))
    assert tp1[0]["summary"]["valid_loss_base2"] == pytest.approx(trained, rel=1e-6)
    assert back[0]["summary"]["valid_loss_base2"] == pytest.approx(trained, rel=1e-6)


@pytest.mark.slow
def test_converted_fairseq_model_fine_tunes_at_tp2_pp2(wiki103_tiny_fixture, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(wiki103_tiny_fixture / "data-bin" / "dict.txt", data / "dict.txt")
    for split in ("train", "valid"):  # the fixture ships the test split only
        for ext in ("bin", "idx"):
            (data / f"{split}.{ext}").symlink_to(wiki103_tiny_fixture / "data-bin" / f"test.{ext}")
    converted = tmp_path / "converted"
    subprocess.run(
        [sys.executable, "tools/convert_fairseq_ckpt.py", "--input", str(wiki103_tiny_fixture / "checkpoint.pt"),
         "--output", str(converted), "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    no_dropout = [
        "--dropout",
        "0",
        "--attention-dropout",
        "0",
        "--activation-dropout",
        "0",
        "--adaptive-softmax-dropout",
        "0",
    ]  # dropout masks depend on the layout; the arithmetic must not
    # The recipe's optimizer (NAG, clip 0.1). Adam is no test of the layouts here: it divides each element's step
    # by that element's own gradient scale, so rounding-level differences between two layouts' gradients become
    # lr-sized steps, and the gradient norms part by 1e-3 within 5 updates (measured on an Intel Xeon).
    common = ["--tokens-per-sample", "128", "--no-save", "--optimizer", "nag", "--lr", "0.1", "--clip-norm", "0.1",
              "--max-valid-steps", "8", "--max-update", "8", *no_dropout]  # fmt: skip
    # reference: one process fine-tunes the consolidated folder the converter wrote
    argv = _argv(data, *common, "--init-from", str(converted), "--deepspeed_config", "ds_configs/zero1.json")
    reference = run_on_ranks(train_on_rank, nprocs=1, timeout=300, argv=argv)[0]
    # TP2xPP2 resumes from the DeepSpeed checkpoint the converter wrote for that layout
    resume = ["--init-from", str(converted), "--save-dir", str(converted / "deepspeed")]  # config + checkpoint
    after = run_on_ranks(train_on_rank, nprocs=4, timeout=300, argv=_argv(data, *common, *resume, *TP2_PP2))[0]
    assert reference["error"] is None and after["error"] is None, (reference["error"], after["error"])
    assert len(after["history"]) == len(reference["history"]) == 8
    for got, want in zip(after["history"], reference["history"], strict=True):
        assert got["loss_sum"] / got["ntokens"] == pytest.approx(want["loss_sum"] / want["ntokens"], rel=1e-5)
        assert got["gnorm"] == pytest.approx(want["gnorm"], rel=1e-5)
    assert len(after["history"]) == 8
    assert after["summary"]["valid_loss_base2"] == pytest.approx(reference["summary"]["valid_loss_base2"], rel=1e-6)
    # the first update starts from the fairseq weights: its batch loss is near fairseq-eval-lm's on this split
    fairseq_loss = float(json.loads((wiki103_tiny_fixture / "expected.json").read_text())["eval_lm"][0]["loss_base2"])
    first = after["history"][0]
    assert first["loss_sum"] / first["ntokens"] / math.log(2) == pytest.approx(fairseq_loss, rel=0.1)
