"""--to-fairseq files are fairseq's own: the real fairseq evaluates them to our perplexity and trains from them.

Two models: fixture A (made by fairseq, converted to our folder and back) and one trained here for 3
updates. Data: the oracle's own binarisation (``oracle_data_bin``). Evaluation in fairseq-eval-lm's
three modes must print tools/eval_lm.py's perplexity within 1e-5 relative; ``fairseq-train
--restore-file`` and ``--finetune-from-model`` must load the file and take an update from exactly its
weights (lr 1e-6: the saved weights stay within 1e-4 of ours, where a fresh init differs by ~0.1).
"""

import json
from pathlib import Path

import pytest
import torch

from adaptive_lm_ds.formats.consolidated import load_consolidated
from adaptive_lm_ds.interop import load_fairseq_checkpoint, safe_load
from adaptive_lm_ds.testing import run_on_ranks
from tests.oracle import FIXTURE_A, SCRIPTS, fairseq_arch_flags, shared_or_skip, tool_main

from .training_runs import train_on_rank

TOKENS_PER_SAMPLE = 128
MODES = {
    "no-context-window": ["--sample-break-mode", "none", "--context-window", "0"],
    "context-window-64": ["--sample-break-mode", "none", "--context-window", "64"],
    "eos": ["--sample-break-mode", "eos"],
}


@pytest.fixture(scope="module")
def models(fairseq_oracle, oracle_data_bin, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (our consolidated folder, the --to-fairseq .pt written from it)."""
    root = tmp_path_factory.mktemp("oracle-models")
    convert, export = tool_main("convert_fairseq_ckpt"), tool_main("export_checkpoint")
    fixture = shared_or_skip(FIXTURE_A)
    convert(
        ["--input", str(fixture / "checkpoint.pt"), "--dict", str(fixture / "dict.txt"), "--output", str(root / "a")]
    )
    argv = [
        "--data", str(oracle_data_bin), "--preset", "tiny", "--tokens-per-sample", "64", "--batch-size", "4",
        "--max-update", "3", "--lr", "0.5", "--warmup-updates", "0", "--lr-scheduler", "fixed",
        "--save-dir", str(root / "run"), "--validate-interval-updates", "0", "--max-valid-steps", "1",
    ]  # fmt: skip
    (result,) = run_on_ranks(train_on_rank, nprocs=1, argv=argv)
    assert result["error"] is None and result["summary"]["num_updates"] == 3
    assert export(["--checkpoint", str(root / "run"), "--output", str(root / "ours")]) == 0
    out = {}
    for name, folder in (("fixture-A", root / "a"), ("trained-here", root / "ours")):
        convert(["--to-fairseq", "--input", str(folder), "--output", str(root / f"{name}-fs" / "model.pt")])
        out[name] = (folder, root / f"{name}-fs" / "model.pt")
    return out


@pytest.fixture(scope="module")
def fairseq_ppl(fairseq_oracle, oracle_data_bin, models, tmp_path_factory) -> dict:
    """fairseq-eval-lm's (loss, ppl) for every model x mode, from one oracle interpreter."""
    root = tmp_path_factory.mktemp("oracle-eval")
    runs = {
        f"{name}/{mode}": [str(oracle_data_bin), "--path", str(pt), "--gen-subset", "test", "--cpu",
                           "--tokens-per-sample", str(TOKENS_PER_SAMPLE), *flags]
        for name, (_, pt) in models.items() for mode, flags in MODES.items()
    }  # fmt: skip
    (root / "runs.json").write_text(json.dumps(runs))
    fairseq_oracle.run("python", SCRIPTS / "eval_lm_json.py", root / "out.json", root / "runs.json")
    return json.loads((root / "out.json").read_text())


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", ["fixture-A", "trained-here"])
def test_fairseq_eval_lm_prints_our_perplexity(name, mode, models, fairseq_ppl, oracle_data_bin, tmp_path):
    folder, _ = models[name]
    out = tmp_path / "ours.json"
    tool_main("eval_lm")([
        "--path", str(folder), "--data", str(oracle_data_bin), "--gen-subset", "test",
        "--tokens-per-sample", str(TOKENS_PER_SAMPLE), *MODES[mode], "--json", str(out),
    ])  # fmt: skip
    ours, theirs = json.loads(out.read_text()), fairseq_ppl[f"{name}/{mode}"]
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-5, abs=0)
    assert ours["loss_base2"] == pytest.approx(theirs["loss_base2"], rel=1e-5, abs=0)


def _fairseq_train_one_update(oracle, data_bin: Path, pt: Path, save_dir: Path, how: str) -> str:
    cfg, _ = load_fairseq_checkpoint(pt)
    return oracle.run(
        "fairseq-train", data_bin, "--task", "language_modeling", *fairseq_arch_flags(cfg),
        "--criterion", "adaptive_loss", "--tokens-per-sample", "64", "--sample-break-mode", "none",
        "--max-tokens", "512", "--optimizer", "nag", "--lr", "1e-6", "--clip-norm", "0.1",
        "--max-update", "1", "--dropout", "0", "--seed", "1", "--cpu", "--ddp-backend", "legacy_ddp",
        "--save-dir", save_dir, how, pt, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
    )  # fmt: skip


@pytest.mark.parametrize("how", ["--restore-file", "--finetune-from-model"])
@pytest.mark.parametrize("name", ["fixture-A", "trained-here"])
def test_fairseq_train_starts_from_the_file(name, how, fairseq_oracle, oracle_data_bin, models, tmp_path):
    folder, pt = models[name]
    log = _fairseq_train_one_update(fairseq_oracle, oracle_data_bin, pt, tmp_path / "ckpt", how)
    assert f"Loaded checkpoint {pt} (epoch 1 @ 0 updates)" in log and "done training" in log, log[-3000:]
    saved, written = safe_load(tmp_path / "ckpt" / "checkpoint_last.pt"), safe_load(pt)
    assert saved["optimizer_history"][-1]["num_updates"] == 1
    assert written["cfg"].keys() == saved["cfg"].keys()  # every section fairseq writes
    assert written["cfg"]["model"].keys() == saved["cfg"]["model"].keys()
    assert written["cfg"]["model"]["_name"] == saved["cfg"]["model"]["_name"] == "transformer_lm_wiki103"
    _, after = load_fairseq_checkpoint(tmp_path / "ckpt" / "checkpoint_last.pt")
    _, ours, _ = load_consolidated(folder)
    assert after.keys() == ours.keys()
    for key, tensor in ours.items():  # one update at lr 1e-6 from exactly these weights
        torch.testing.assert_close(after[key], tensor, rtol=0, atol=1e-4, msg=key)


def test_stored_fairseq_defaults_are_what_the_oracle_builds(fairseq_oracle, tmp_path):
    """adaptive_lm_ds/interop/fairseq_defaults.json is the oracle's output, not a hand-edited table."""
    from adaptive_lm_ds.interop.fairseq_cfg import DEFAULTS_FILE

    out = tmp_path / "defaults.json"
    fairseq_oracle.run("python", SCRIPTS / "dump_fairseq_defaults.py", out)
    assert json.loads(out.read_text()) == json.loads(DEFAULTS_FILE.read_text())
