"""LanguageModel scores and generates like fairseq's hub (fixture A, the real fairseq as the oracle)."""

import json
import math
from pathlib import Path

import pytest
import torch

from adaptive_lm_ds import LanguageModel, parallel
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.inference.search import GenerationConfig, Specials, TokenChooser
from adaptive_lm_ds.testing import run_on_ranks, run_script
from tests.oracle import REPO

SENTENCES = [
    "the game was released in japan",
    "In 1995 , the band toured Europe with a new drummer .",
    "zzyzx is not a word in this dictionary",
    "= = Reception = =",
]
PROMPTS = ["the game was", "In 1995 , the band", "He was born in", "The"]
GREEDY = [  # fairseq hub.sample options; each runs on every prompt
    {"max_len_b": 24},
    {"max_len_b": 24, "unkpen": 3.0},
    {"max_len_b": 30, "min_len": 20, "unkpen": 3.0},
]


@pytest.fixture(scope="module")
def fixture_dir(wiki103_tiny_fixture) -> Path:
    return wiki103_tiny_fixture


@pytest.fixture(scope="module")
def lm(fixture_dir):
    """Fixture A's fairseq checkpoint, converted in memory, at TP 1 (dict.txt found beside the .pt)."""
    with parallel.single_process():
        yield LanguageModel.load(fixture_dir / "checkpoint.pt")


@pytest.fixture(scope="module")
def hub(fixture_oracle_requests, fairseq_oracle, fixture_dir, tmp_path_factory):
    """fairseq's own ``TransformerLanguageModel.from_pretrained(...)`` answers, computed once."""
    tmp = tmp_path_factory.mktemp("hub")
    (tmp / "requests.json").write_text(json.dumps(fixture_oracle_requests))
    script = Path(__file__).with_name("fairseq_hub_script.py")
    fairseq_oracle.run("python", script, fixture_dir, "checkpoint.pt", tmp / "requests.json", tmp / "out.json")
    return json.loads((tmp / "out.json").read_text())


@pytest.fixture(scope="module")
def fixture_oracle_requests():
    samples = [{"prefix": p, **options} for options in GREEDY for p in PROMPTS]
    return {"score": SENTENCES, "sample": samples}


def test_scores_equal_fairseq_hub(lm, hub):
    ours = lm.score(SENTENCES)
    for mine, theirs in zip(ours, hub["score"], strict=True):
        assert mine["tokens"].tolist() == theirs["tokens"]  # every word, no final </s> (fairseq's hub)
        diff = (mine["positional_scores"] - torch.tensor(theirs["positional_scores"])).abs().max()
        assert diff < 1e-5, f"max |log p - fairseq| = {diff}"


def test_score_with_append_eos_adds_the_final_eos_term(lm):
    plain, with_eos = lm.score(SENTENCES[0]), lm.score(SENTENCES[0], append_eos=True)
    assert with_eos["tokens"].tolist() == plain["tokens"].tolist() + [2]
    assert torch.allclose(with_eos["positional_scores"][:-1], plain["positional_scores"], atol=1e-6)
    assert with_eos["positional_scores"][-1] < 0


@pytest.mark.parametrize("case", range(len(GREEDY)))
def test_greedy_continuations_equal_fairseq_hub(case, lm, hub):
    options = GREEDY[case]
    theirs = hub["sample"][case * len(PROMPTS) : (case + 1) * len(PROMPTS)]
    ours = lm.generate(PROMPTS, batch_size=len(PROMPTS), **options)  # one batch of different lengths
    for prompt, mine, ref in zip(PROMPTS, ours, theirs, strict=True):
        assert lm.decode(mine.tokens) == ref["text"], prompt
        assert mine.tokens.tolist() == ref["tokens"]
        assert torch.allclose(mine.positional_scores, torch.tensor(ref["positional_scores"]), atol=1e-4)
    if "min_len" in options:
        assert all(len(h.tokens) > options["min_len"] for h in ours)


SAMPLING = {
    "greedy": {},
    "sampling": {"sampling": True, "seed": 7},
    "topk": {"sampling": True, "sampling_topk": 10, "temperature": 0.8, "seed": 7},
    # Top-p at temperature 0.5: at temperature 1 this small model's next-word distributions are nearly flat
    # (0.9 of the mass over ~12k words of ~1e-5 each), so the ~5e-7 by which two computations of the same
    # distribution differ (cached vs uncached, TP 2 vs TP 1) moves the nucleus cut-off, and with it the draw,
    # at a few percent of the steps. The sharper distribution makes that rarer; it is not excluded (a draw near a
    # cut-off can still differ on another CPU's kernels), and `nucleus` sums the mass in float64 to add no noise.
    "topp": {"sampling": True, "sampling_topp": 0.9, "temperature": 0.5, "seed": 7, "unkpen": 2.0},
}


@pytest.mark.parametrize("mode", sorted(SAMPLING))
def test_cached_decoding_equals_uncached(mode, lm):
    cached = lm.generate(PROMPTS, max_len_b=30, **SAMPLING[mode])
    uncached = lm.generate(PROMPTS, max_len_b=30, use_cache=False, **SAMPLING[mode])
    for a, b in zip(cached, uncached, strict=True):
        assert a.tokens.tolist() == b.tokens.tolist()
        assert torch.allclose(a.positional_scores, b.positional_scores, atol=1e-5)


LEARNED = {  # overrides of the tiny preset: learned positions, untied adaptive softmax or a full softmax
    "untied-adaptive": {"cutoffs": (16, 32), "tie_adaptive_weights": False, "tie_adaptive_proj": False},
    "full-softmax": {"adaptive_softmax": False, "adaptive_input": False, "tie_adaptive_weights": False,
                     "tie_adaptive_proj": False},
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(LEARNED))
def test_cache_offsets_learned_positions(variant, lm):  # lm: holds the TP 1 parallel state
    from adaptive_lm_ds.config import tiny
    from adaptive_lm_ds.inference import generate
    from adaptive_lm_ds.model.lm import AdaptiveLM

    cfg = tiny(vocab_size=64, learned_pos=True, max_positions=48, **LEARNED[variant])
    prompts, sp = [[5, 6, 7], [9], [10, 11, 12, 13, 14]], Specials(pad=1, eos=2, unk=3)
    model = AdaptiveLM(cfg).eval()
    for sampling in (False, True):  # min_len: decode far enough to exercise the offsets
        options = GenerationConfig(sampling=sampling, seed=3, max_len_b=40, min_len=30)
        cached = generate(model, prompts, options, sp)
        uncached = generate(model, prompts, GenerationConfig(**{**options.__dict__, "use_cache": False}), sp)
        for a, b in zip(cached, uncached, strict=True):
            assert len(a.tokens) > 30 and a.tokens.tolist() == b.tokens.tolist()
            assert torch.allclose(a.positional_scores, b.positional_scores, atol=1e-5)


def test_cache_takes_several_new_positions_at_once(lm):
    """Feeding 5, then 3, then 1 tokens through the cache gives the hidden states of one full forward."""
    tokens = torch.tensor([lm.encode("= = Reception = = The game was well received by")])
    full = lm.model.hidden_states(tokens)
    cache = lm.model.new_cache()
    parts = [lm.model.hidden_states(tokens[:, a:b], cache=cache) for a, b in ((0, 5), (5, 8), (8, 9))]
    assert cache[0].length == 9
    assert torch.allclose(torch.cat(parts, dim=1), full[:, :9], atol=1e-5)


def test_sampling_is_reproducible_for_a_seed(lm):
    options = {"sampling": True, "sampling_topk": 20, "max_len_b": 30}
    first = lm.sample(PROMPTS, seed=11, **options)
    assert lm.sample(PROMPTS, seed=11, **options) == first
    assert lm.sample(PROMPTS, seed=12, **options) != first


def _random_states(lm, rows: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return scale * torch.randn(rows, lm.model.cfg.embed_dim, generator=gen)


def test_greedy_with_tails_on_demand_is_the_full_argmax(lm):
    """Scaled random states put the best word in every band; only needed tails are computed."""
    softmax = lm.model.output
    chooser = TokenChooser(softmax, GenerationConfig(), lm.specials, None)
    h = _random_states(lm, 512, 12.0)
    full = softmax.gather_log_probs(softmax.log_probs(h))
    full[:, 1] = -math.inf  # <pad> is never chosen
    tokens, scores = chooser.choose(h, step=5, max_len=100, forced=torch.full((512,), -1))
    bands = torch.bucketize(tokens, torch.tensor([1000, 5000]), right=True)
    assert set(bands.tolist()) == {0, 1, 2}
    assert tokens.tolist() == full.argmax(1).tolist()
    assert torch.allclose(scores, full.max(1).values, atol=1e-5)


def test_sampling_head_then_tail_draws_from_the_full_distribution(lm):
    """Frequencies of the bands and of the likeliest words match exp(log p) over the whole vocabulary."""
    softmax = lm.model.output
    h = _random_states(lm, 1, 3.0).expand(20000, -1)
    cfg = GenerationConfig(sampling=True, seed=5)
    chooser = TokenChooser(softmax, cfg, lm.specials, torch.Generator().manual_seed(5))
    tokens, scores = chooser.choose(h, step=5, max_len=100, forced=torch.full((20000,), -1))
    probs = softmax.gather_log_probs(softmax.log_probs(h[:1]))[0]
    probs[1] = -math.inf
    probs = probs.exp() / probs.exp().sum()
    counts = torch.bincount(tokens, minlength=len(probs)).double() / len(tokens)
    for lo, hi in ((0, 1000), (1000, 5000), (5000, len(probs))):
        p = float(probs[lo:hi].sum())
        assert abs(float(counts[lo:hi].sum()) - p) < 5 * math.sqrt(p * (1 - p) / len(tokens)) + 1e-4
    for word in probs.topk(5).indices.tolist():
        p = float(probs[word])
        assert abs(float(counts[word]) - p) < 5 * math.sqrt(p * (1 - p) / len(tokens)) + 1e-4
    full = torch.log(softmax.gather_log_probs(softmax.log_probs(h[:1]))[0].exp())
    assert torch.allclose(scores, full[tokens], atol=1e-5)  # each draw scored with its exact log p


def _tp_answers(fixture: str) -> dict:
    parallel.initialize_parallel(parallel.ParallelDims(tp=2))
    try:
        lm = LanguageModel.load(Path(fixture) / "checkpoint.pt")
        return {
            "score": [s["positional_scores"].tolist() for s in lm.score(SENTENCES)],
            **{mode: lm.sample(PROMPTS, max_len_b=20, **options) for mode, options in SAMPLING.items()},
        }
    finally:
        parallel.destroy_parallel()


def test_tp2_equals_tp1(lm, fixture_dir):
    per_rank = run_on_ranks(_tp_answers, nprocs=2, timeout=300, fixture=str(fixture_dir))
    assert per_rank[0] == per_rank[1]
    got = per_rank[0]
    for scores, mine in zip(got["score"], lm.score(SENTENCES), strict=True):
        assert torch.allclose(torch.tensor(scores), mine["positional_scores"], atol=1e-5)
    for mode, options in SAMPLING.items():
        assert got[mode] == lm.sample(PROMPTS, max_len_b=20, **options), mode


def test_generate_cli_tp2_under_deepspeed_launcher_equals_tp1(lm, fixture_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = [
        "--path", fixture_dir / "checkpoint.pt", "--input", prompts, "--max-len-b", "20",
        "--sampling", "--sampling-topk", "10", "--seed", "3", "--batch-size", "3",
        "--tensor-model-parallel-size", "2",
    ]  # fmt: skip
    out = run_script(REPO / "tools" / "generate.py", args, nprocs=2, launcher="deepspeed", timeout=300).output
    want = lm.sample(PROMPTS[:3], sampling=True, sampling_topk=10, seed=3, max_len_b=20, batch_size=3)
    want += lm.sample(PROMPTS[3:], sampling=True, sampling_topk=10, seed=6, max_len_b=20)
    lines = [line for line in out.splitlines() if any(line.startswith(p + " ") for p in PROMPTS)]
    assert lines == want


@pytest.mark.parametrize(
    "argv",
    [
        ["--prefix", "the", "--sampling-topk", "5"],
        ["--input", "/nonexistent/prompts.txt"],
        ["--prefix", "a", "--beam", "0"],
    ],
)
def test_generate_cli_bad_input_is_one_line(argv, fixture_dir):
    from adaptive_lm_ds.commands.generate import main

    with pytest.raises(UserError) as err:
        main(["--path", str(fixture_dir / "checkpoint.pt"), *argv])
    assert str(err.value) and "\n" not in str(err.value)
