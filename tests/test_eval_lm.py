"""tools/eval_lm.py / adaptive_lm_ds.evaluation reproduce fairseq-eval-lm on the fixture, at TP 1 and TP 2."""

import json
import math

import numpy as np
import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.data import IndexedTokens, build_lm_dataset
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.evaluation import eval_block_size, evaluate_lm, windows
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.interop import load_fairseq_checkpoint
from adaptive_lm_ds.model.lm import AdaptiveLM
from adaptive_lm_ds.testing import run_on_ranks, run_script
from adaptive_lm_ds.word_scores import WordScores
from tests.conftest import SHARED
from tests.oracle import REPO

# (mode name in expected.json, break mode, context window); all with --tokens-per-sample 128
MODES = {"i": ("none", 0), "ii": ("none", 64), "iii": ("eos", 0)}
PREFIX = 300  # samples for the TP 2 checks of modes (i) and (ii)


def _expected(fixture, mode):
    runs = json.loads((fixture / "expected.json").read_text())["eval_lm"]
    return next(r for r in runs if r["name"].startswith(f"({mode})"))


def _evaluate(fixture, mode, max_samples=None, words=False, progress=False):
    cfg, state = load_fairseq_checkpoint(fixture / "checkpoint.pt")
    model = AdaptiveLM(cfg).eval()
    load_weights(model, state)
    break_mode, window = MODES[mode]
    dataset = build_lm_dataset(
        fixture / "data-bin", "test", eval_block_size(128, window), break_mode, drop_oversize=False
    )
    collected = WordScores(dataset.dictionary) if words else None
    result = evaluate_lm(
        model, dataset, context_window=window, max_tokens=8192, max_samples=max_samples, words=collected,
        progress=progress,
    )  # fmt: skip
    return (result, collected) if words else result


@pytest.fixture(scope="module")
def fixture_dir():
    """The fairseq-wiki103-tiny fixture, once per module (conftest's fixture is per test)."""
    path = SHARED / "fixtures" / "fairseq-wiki103-tiny"
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the ../shared fixtures that CI provides")
    return path


@pytest.fixture(scope="module")
def tp1_results(fixture_dir):
    with parallel.single_process():
        full = {mode: _evaluate(fixture_dir, mode) for mode in MODES}
        prefix = {mode: _evaluate(fixture_dir, mode, PREFIX) for mode in ("i", "ii")}
    return full, prefix


@pytest.mark.parametrize("mode", sorted(MODES))
def test_tp1_matches_fairseq_eval_lm(mode, tp1_results, fixture_dir):
    result, expected = tp1_results[0][mode], _expected(fixture_dir, mode)
    sizes = IndexedTokens(fixture_dir / "data-bin" / "test").sizes.astype(np.int64)
    max_len = 128  # --tokens-per-sample and the model's max positions
    expected_tokens = int(sizes.sum()) if mode != "iii" else int(sizes[sizes <= max_len].sum())
    assert result.tokens == expected_tokens == expected["tokens_evaluated"]
    assert result.skipped_samples == (int((sizes > max_len).sum()) if mode == "iii" else 0)
    fairseq_loss = expected["full_precision_from_eval_lm_main"]["loss_base2"]
    assert abs(result.loss_base2 - fairseq_loss) / fairseq_loss < 1e-4
    assert abs(result.perplexity - float(expected["perplexity"])) / float(expected["perplexity"]) < 1e-4
    assert f"{result.loss_base2:.4f}" == expected["loss_base2"] and f"{result.perplexity:.2f}" == expected["perplexity"]
    assert result.loss_nats == pytest.approx(result.loss_base2 * math.log(2), rel=1e-6)


def test_a_progress_bar_counts_samples_on_stderr_and_changes_no_score(tp1_results, fixture_dir, capsys):
    with parallel.single_process():
        result = _evaluate(fixture_dir, "ii", PREFIX, progress=True)
    assert result == tp1_results[1]["ii"]
    err = capsys.readouterr().err
    assert f"0/{PREFIX} " in err and "sample" in err  # tqdm's "n/total [..., sample/s]"


def test_context_window_scores_each_token_once_after_its_preceding_inputs(fixture_dir):
    dataset = build_lm_dataset(fixture_dir / "data-bin", "test", 40, "none", check_ids=False)
    stream = IndexedTokens(fixture_dir / "data-bin" / "test").read(0, 400)
    inputs = np.concatenate([[2], stream[:-1]])  # fairseq's shifted stream: </s> then the tokens
    rows = list(windows(dataset, np.arange(10), context_window=88))
    scored = np.concatenate([w.targets[w.score_from :] for w in rows])
    assert np.array_equal(scored, stream)  # every target once, in order
    for k, w in enumerate(rows):
        start = max(0, 40 * k - 88)  # up to 88 preceding inputs, then the block's own 40
        assert np.array_equal(w.tokens, inputs[start : 40 * (k + 1)]) and w.score_from == 40 * k - start


def test_word_probs_are_the_model_log_probs_of_each_target(fixture_dir):
    ref = torch.load(fixture_dir / "logprobs.pt", weights_only=True)
    with parallel.single_process():
        _, words = _evaluate(fixture_dir, "i", max_samples=5, words=True)
    by_id = dict(words.samples)
    dictionary = build_lm_dataset(fixture_dir / "data-bin", "test", 128, check_ids=False).dictionary
    for block in range(4):
        words, values = zip(*by_id[block])
        assert list(words) == [dictionary[int(t)] for t in ref["target"][block]]
        assert np.abs(np.array(values) - ref["logprobs"][block].numpy()).max() < 1e-5


def _tp2_prefixes(fixture):
    from pathlib import Path

    parallel.initialize_parallel(parallel.ParallelDims(tp=2))
    try:
        return {mode: _evaluate(Path(fixture), mode, PREFIX).as_json() for mode in ("i", "ii")}
    finally:
        parallel.destroy_parallel()


def test_tp2_matches_tp1_on_a_prefix_of_modes_i_and_ii(tp1_results, fixture_dir):
    per_rank = run_on_ranks(_tp2_prefixes, nprocs=2, timeout=300, fixture=str(fixture_dir))
    for got in per_rank:
        for mode in ("i", "ii"):
            want = tp1_results[1][mode]
            assert got[mode]["tokens"] == want.tokens == PREFIX * 64 * (2 if mode == "i" else 1)
            assert got[mode]["loss_base2"] == pytest.approx(want.loss_base2, rel=1e-6)


def test_eval_lm_cli_tp2_full_split_mode_iii(tp1_results, fixture_dir, tmp_path):
    out = tmp_path / "iii.json"
    args = [
        "--path", fixture_dir / "checkpoint.pt", "--data", fixture_dir / "data-bin",
        "--gen-subset", "test", "--tokens-per-sample", "128", "--sample-break-mode", "eos",
        "--tensor-model-parallel-size", "2", "--json", out,
    ]  # fmt: skip
    log = run_script(REPO / "tools" / "eval_lm.py", args, nprocs=2, timeout=300).output
    got, expected = json.loads(out.read_text()), _expected(fixture_dir, "iii")
    assert got["tokens"] == tp1_results[0]["iii"].tokens == expected["tokens_evaluated"]
    assert got["loss_base2"] == pytest.approx(tp1_results[0]["iii"].loss_base2, rel=1e-6)
    assert f"Loss (base 2): {expected['loss_base2']}, Perplexity: {expected['perplexity']}" in log
    assert "Evaluated 96,544 tokens" in log


def test_eval_lm_cli_tp2_pp2_matches_tp1_on_a_prefix_of_mode_ii(tp1_results, fixture_dir, tmp_path):
    out = tmp_path / "ii.json"
    args = [
        "--path", fixture_dir / "checkpoint.pt", "--data", fixture_dir / "data-bin", "--gen-subset", "test",
        "--tokens-per-sample", "128", "--context-window", "64", "--max-samples", PREFIX,
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--json", out,
    ]  # fmt: skip
    run_script(REPO / "tools" / "eval_lm.py", args, nprocs=4, timeout=300)
    got, want = json.loads(out.read_text()), tp1_results[1]["ii"]
    assert got["tokens"] == want.tokens == PREFIX * 64
    assert got["loss_base2"] == pytest.approx(want.loss_base2, rel=1e-6)


def test_eval_lm_cli_pp2_under_deepspeed_launcher_matches_tp1(tp1_results, fixture_dir, tmp_path):
    out = tmp_path / "ii.json"
    args = [
        "--path", fixture_dir / "checkpoint.pt", "--data", fixture_dir / "data-bin", "--gen-subset", "test",
        "--tokens-per-sample", "128", "--context-window", "64", "--max-samples", PREFIX,
        "--pipeline-model-parallel-size", "2", "--json", out,
    ]  # fmt: skip
    run_script(REPO / "tools" / "eval_lm.py", args, nprocs=2, launcher="deepspeed", timeout=300)
    got, want = json.loads(out.read_text()), tp1_results[1]["ii"]
    assert got["tokens"] == want.tokens == PREFIX * 64
    assert got["loss_base2"] == pytest.approx(want.loss_base2, rel=1e-6)


def _eval_lm_main():
    from adaptive_lm_ds.commands.eval_lm import main

    return main


def test_eval_lm_refuses_incomplete_checkpoints_and_a_world_that_does_not_fit(tmp_path, fixture_dir):
    main = _eval_lm_main()
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "latest").write_text("checkpoint_10")  # a save that never completed
    data = ["--data", str(fixture_dir / "data-bin")]
    with pytest.raises(UserError, match="not a complete checkpoint"):
        main(["--path", str(tmp_path / "ds"), *data])
    with pytest.raises(UserError, match="pipeline-model-parallel-size"):
        main(["--path", str(fixture_dir / "checkpoint.pt"), "--pipeline-model-parallel-size", "2", *data])
