"""adaptive-lm-eval / adaptive-lm-preprocess take fairseq's command lines; what they refuse is one line."""

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.commands import eval_lm, preprocess_data
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.interop import load_fairseq_checkpoint
from adaptive_lm_ds.model.lm import AdaptiveLM, output_log_probs
from adaptive_lm_ds.word_scores import SubwordMerge, WordScores
from tests.oracle import FIXTURE_A, shared_or_skip


def test_positional_data_is_the_data_flag():
    positional = eval_lm.parse_args(["data-bin/wikitext-103", "--path", "m.pt", "--max-sentences", "2"])
    flag = eval_lm.parse_args(["--data", "data-bin/wikitext-103", "--path", "m.pt", "--batch-size", "2"])
    assert positional.data == flag.data == "data-bin/wikitext-103" and positional.batch_size == flag.batch_size == 2


def test_fairseq_eval_lm_readme_command_parses():
    args = eval_lm.parse_args(
        "data-bin/wikitext-103 --path checkpoints/transformer_wiki103/checkpoint_best.pt --sample-break-mode complete "
        "--max-tokens 3072 --context-window 2560 --softmax-batch 1024 --remove-bpe --task language_modeling".split()
    )
    assert (args.sample_break_mode, args.max_tokens, args.context_window, args.softmax_batch) == (
        "complete", 3072, 2560, 1024,
    )  # fmt: skip
    assert args.remove_bpe == "subword_nmt"


@pytest.mark.parametrize(
    "parse, argv, named",
    [
        (eval_lm.parse_args, ["d", "--path", "m.pt", "--add-bos-token"], "--add-bos-token"),
        (eval_lm.parse_args, ["d", "--path", "m.pt", "--wandb-project", "x"], "--wandb-project"),
        (eval_lm.parse_args, ["d", "--path", "m.pt", "--task", "translation"], "--task"),
        (eval_lm.parse_args, ["d", "e", "--path", "m.pt"], "unrecognized arguments: e"),
        (eval_lm.parse_args, ["d", "--data", "e", "--path", "m.pt"], "two data dirs"),
        (preprocess_data.parse_args, ["--trainpref", "t", "-s", "en"], "-s"),
        (preprocess_data.parse_args, ["--trainpref", "t", "--joined-dictionary"], "--joined-dictionary"),
    ],
)
def test_what_is_refused_is_one_line_naming_the_flag(parse, argv, named, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and named in err and "usage" not in err


@pytest.fixture(scope="module")
def fixture_model():
    with parallel.single_process():
        cfg, state = load_fairseq_checkpoint(shared_or_skip(FIXTURE_A) / "checkpoint.pt")
        model = AdaptiveLM(cfg).eval()
        load_weights(model, state)
        yield model


def test_softmax_batch_bounds_the_output_layer_rows_and_changes_no_score(fixture_model):
    tokens = torch.randint(4, 13784, (3, 50), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(tokens, -1, dims=1)
    h = fixture_model.hidden_states(tokens)
    rows = []
    original = fixture_model.output.target_log_probs

    def spy(hidden, target):
        rows.append(hidden.reshape(-1, hidden.shape[-1]).shape[0])
        return original(hidden, target)

    fixture_model.output.target_log_probs = spy
    try:
        chunked = output_log_probs(fixture_model.output, h, targets, softmax_batch=40)
    finally:
        del fixture_model.output.target_log_probs
    whole = output_log_probs(fixture_model.output, h, targets)
    assert rows == [40, 40, 40, 30]  # 150 positions, 40 at a time (fairseq's SequenceScorer split)
    assert (chunked - whole).abs().max() < 1e-6


def test_remove_bpe_folds_piece_scores_into_the_next_token_left_to_right():
    d = Dictionary()
    ids = [d.add_symbol(w) for w in ("un@@", "believ@@", "able", "story")]
    tokens = torch.tensor(ids)
    scores = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    assert SubwordMerge(d, "@@ ").merge(tokens, scores) == 2
    assert scores.tolist() == [0.0, 0.0, -6.0, -4.0]  # -1 into -2, then -3 into -3
    words = WordScores(d, SubwordMerge(d, "subword_nmt"))
    words.add(7, tokens, scores)
    assert words.prob_lines() == ["7 unbelievable [-6.000000]\tstory [-4.000000]"]
    assert words.stat_lines() == ["unbelievable\t1\t-6.0\tTrue\t-4.0\t1", "story\t1\t-4.0\tFalse\t0\t0"]
