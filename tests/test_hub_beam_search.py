"""LanguageModel.from_pretrained(..., tokenizer="moses") and beam search equal fairseq's hub (fixture A, the oracle).

fairseq's side is ``TransformerLanguageModel.from_pretrained(FIXTURE_A, "checkpoint.pt", ".", tokenizer="moses")``
(tests/fairseq_hub_script.py, the oracle's interpreter): raw text with punctuation in, raw text out.
"""

import json
from pathlib import Path

import pytest
import torch

from adaptive_lm_ds import LanguageModel, parallel
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.inference.beam_search import ban_repeated_ngrams, beam_search
from adaptive_lm_ds.inference.search import GenerationConfig
from adaptive_lm_ds.testing import run_on_ranks, run_script
from tests.oracle import FIXTURE_A, REPO, shared_or_skip

SENTENCES = [
    'The game, released in 2004, was a well-known "hit" in Japan!',
    "He said: it's the best-selling title (so far) & more...",
]
PROMPTS = ["The game was released in", "In 1995, the band's well-known album", "He was born in", "Hello, world!"]
BEAMS = [{"beam": b, "max_len_b": 30} for b in range(1, 6)]  # beam 1..5 on every prompt
OPTIONS = [  # fairseq SequenceGenerator options, beam > 1
    {"beam": 5, "max_len_b": 25, "lenpen": 0.5},
    {"beam": 4, "max_len_b": 25, "min_len": 12, "unkpen": 2.0},
    {"beam": 3, "max_len_a": 2, "max_len_b": 5, "lenpen": 2.0},
    {"beam": 2, "max_len_b": 20, "unnormalized": True, "temperature": 0.7},
]
REQUESTS = [{"prefix": p, **o} for o in BEAMS + OPTIONS for p in PROMPTS]


@pytest.fixture(scope="module")
def release_folder() -> Path:
    """Fixture A laid out as a fairseq release folder: checkpoint.pt with dict.txt beside it."""
    return shared_or_skip(FIXTURE_A)


@pytest.fixture(scope="module")
def lm(release_folder):
    """The folder loaded as fairseq's hub loads it, with moses."""
    with parallel.single_process():
        yield LanguageModel.from_pretrained(release_folder, "checkpoint.pt", ".", tokenizer="moses")


@pytest.fixture(scope="module")
def hub(fairseq_oracle, release_folder, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("hub-moses")
    batches = [{"prompts": PROMPTS, **options} for options in (BEAMS[3], OPTIONS[0], OPTIONS[1])]
    requests = {"tokenizer": "moses", "score": SENTENCES, "sample": REQUESTS, "batch": batches}
    (tmp / "requests.json").write_text(json.dumps(requests))
    script = Path(__file__).with_name("fairseq_hub_script.py")
    fairseq_oracle.run("python", script, release_folder, "checkpoint.pt", tmp / "requests.json", tmp / "out.json")
    return json.loads((tmp / "out.json").read_text())


def test_raw_text_scores_equal_fairseq_hub_with_moses(lm, hub):
    for sentence, mine, theirs in zip(SENTENCES, lm.score(SENTENCES), hub["score"], strict=True):
        assert mine["tokens"].tolist() == theirs["tokens"], sentence  # moses split, escaped, then looked up
        assert (mine["positional_scores"] - torch.tensor(theirs["positional_scores"])).abs().max() < 1e-5


def test_moses_splits_dashes_and_escapes_quotes_as_fairseq(lm):
    words = lm.tokenizer.encode('a well-known "hit" & more')
    assert words == "a well @-@ known &quot; hit &quot; &amp; more"
    assert lm.tokenizer.decode(words) == 'a well-known "hit" & more'


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_beam_search_text_and_hypotheses_equal_fairseq_hub(index, lm, hub):
    request, theirs = REQUESTS[index], hub["sample"][index]
    options = {k: v for k, v in request.items() if k != "prefix"}
    assert lm.sample(request["prefix"], **options) == theirs["text"]
    cfg = GenerationConfig(**options).validate()
    hypos = beam_search(lm.model, [lm.encode(request["prefix"])], cfg, lm.specials)[0]
    assert [h["tokens"].tolist() for h in hypos] == [h["tokens"] for h in theirs["hypos"]]  # the whole n-best
    assert [float(h["score"]) for h in hypos] == pytest.approx([h["score"] for h in theirs["hypos"]], abs=1e-4)


@pytest.mark.parametrize("options", [BEAMS[3], OPTIONS[0], OPTIONS[1]])
def test_a_batch_of_prompts_equals_fairseqs_batch(options, lm, hub):
    """Prompts of different lengths decoded as one batch (finished sentences leave it), as fairseq's hub does.

    ``min_len`` is fairseq's batch rule: it applies only on steps where no prompt of the batch is still being
    forced, so with ``min_len`` 12 a short prompt's output depends on its batch (OPTIONS[1]).
    """
    theirs = hub["batch"][[BEAMS[3], OPTIONS[0], OPTIONS[1]].index(options)]
    assert lm.sample(PROMPTS, batch_size=len(PROMPTS), **options) == theirs


def test_generate_cli_at_tp2_with_moses_and_beam_prints_fairseqs_text(release_folder, hub):
    index = REQUESTS.index({"prefix": PROMPTS[1], **BEAMS[4]})
    args = ["--path", release_folder / "checkpoint.pt", "--tokenizer", "moses", "--prefix", PROMPTS[1],
            "--beam", "5", "--max-len-b", "30", "--tensor-model-parallel-size", "2"]  # fmt: skip
    out = run_script(REPO / "tools" / "generate.py", args, nprocs=2, timeout=300).output
    assert hub["sample"][index]["text"] in out.splitlines()


def test_cached_beam_search_equals_recomputing_every_step(lm):
    cached = lm.generate(PROMPTS, beam=4, max_len_b=20)
    uncached = lm.generate(PROMPTS, beam=4, max_len_b=20, use_cache=False)
    for a, b in zip(cached, uncached, strict=True):
        assert a.tokens.tolist() == b.tokens.tolist()
        assert torch.allclose(a.positional_scores, b.positional_scores, atol=1e-5)


def test_no_repeat_ngram_size_bans_the_token_that_would_repeat_an_ngram():
    tokens = torch.tensor([[2, 5, 6, 7, 5, 6, 1, 1]])  # </s> then a b c a b; step 5 chose the last b
    lprobs = torch.zeros(1, 10)
    ban_repeated_ngrams(tokens, lprobs, step=5, n=3)  # "a b" was followed by c: c is banned
    assert lprobs[0].tolist() == [0.0] * 7 + [float("-inf")] + [0.0] * 2
    lprobs = torch.zeros(1, 10)
    ban_repeated_ngrams(tokens, lprobs, step=5, n=2)  # after b came c: ban c only
    assert (lprobs[0] == float("-inf")).nonzero().squeeze(1).tolist() == [7]


def test_no_repeat_ngram_size_output_repeats_no_bigram(lm):
    for beam in (1, 4):
        hypo = lm.generate(["The game was released in"], beam=beam, max_len_b=30, no_repeat_ngram_size=2)[0]
        ids = hypo.tokens.tolist()
        bigrams = list(zip([2, *ids[:-1]], ids))
        assert len(bigrams) == len(set(bigrams))
        plain = lm.generate(["The game was released in"], beam=beam, max_len_b=30)[0].tokens.tolist()
        assert len(set(zip([2, *plain[:-1]], plain))) < len(plain)  # without the ban this model repeats


def test_beam_sampling_is_reproducible_for_a_seed(lm):
    options = {"beam": 3, "sampling": True, "sampling_topk": 10, "max_len_b": 15, "seed": 4}
    assert lm.sample(PROMPTS, **options) == lm.sample(PROMPTS, **options)
    assert lm.sample(PROMPTS, **{**options, "seed": 5}) != lm.sample(PROMPTS, **options)


def test_unimplemented_hub_options_are_one_clear_error(release_folder):
    with pytest.raises(UserError, match="bpe='fastbpe' is not implemented"):
        LanguageModel.from_pretrained(release_folder, "checkpoint.pt", bpe="fastbpe")
    with pytest.raises(UserError, match="tokenizer='space'"):
        LanguageModel.from_pretrained(release_folder, "checkpoint.pt", tokenizer="space")
    with pytest.raises(UserError, match="dict.txt does not exist"):
        LanguageModel.from_pretrained(release_folder, "checkpoint.pt", data_name_or_path="./data-bin-missing")


def _tp2_beams(fixture: str) -> list[str]:
    parallel.initialize_parallel(parallel.ParallelDims(tp=2))
    try:
        lm = LanguageModel.from_pretrained(fixture, "checkpoint.pt", tokenizer="moses")
        return [lm.sample(PROMPTS, **options) for options in (BEAMS[4], OPTIONS[1])]
    finally:
        parallel.destroy_parallel()


def test_tp2_beam_search_equals_tp1(lm, release_folder):
    per_rank = run_on_ranks(_tp2_beams, nprocs=2, timeout=300, fixture=str(release_folder))
    assert per_rank[0] == per_rank[1] == [lm.sample(PROMPTS, **options) for options in (BEAMS[4], OPTIONS[1])]
