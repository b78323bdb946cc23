"""The whole model at TP = 2 and TP = 4 equals TP = 1 with the same weights (fp32, dropout off).

Every rank builds the TP = 1 reference itself (a world-size-1 stand-in group: no communication), fills
it from a fixed-seed generator, copies its own shards into the TP model and compares loss, per-token
log-probabilities, the gathered full table and the gathered gradients. The vocabulary (203) and every
band divide by neither 2 nor 4, so the padding rows are exercised.

Initialisation is layout-invariant: from the same seed, each TP rank's freshly built shards are exactly
its slice of the freshly built TP = 1 model (``layers/seeded_init.py``).
"""

import pytest
import torch
import torch.distributed as dist

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.model import AdaptiveLM
from adaptive_lm_ds.model.sharding import gather_one_piece
from adaptive_lm_ds.testing import run_on_ranks

VOCAB = 203
CONFIGS = {
    "tied": dict(cutoffs=(23, 81)),
    "untied_learned_gelu_final_norm": dict(
        cutoffs=(23, 81),
        tie_adaptive_weights=False,
        tie_adaptive_proj=False,
        learned_pos=True,
        activation_fn="gelu",
        final_norm=True,
    ),
    "tied_tables_untied_proj": dict(cutoffs=(23, 81), tie_adaptive_proj=False),
    "full_softmax_shared": dict(
        adaptive_input=False,
        adaptive_softmax=False,
        tie_adaptive_weights=False,
        tie_adaptive_proj=False,
        share_input_output_embed=True,
    ),
}


def _batch():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (2, 15), generator=g)
    targets = torch.randint(0, VOCAB, (2, 15), generator=g)
    # ids on each band cutoff (23, 81), just below them, and on the TP=2/4 shard boundaries of each band
    edges = torch.tensor([0, 6, 12, 18, 22, 23, 38, 52, 53, 80, 81, 112, 142, 143, 202])
    tokens[0], targets[1] = edges, edges
    targets[0, :3] = 1  # padding targets are ignored
    targets[1, 5] = 81 + 1  # a tail word whose tail-local index equals padding_idx still counts
    segments = torch.tensor([[0] * 5 + [1] * 10, [0] * 15])
    return tokens, targets, segments


def _reference_weights(model):
    g = torch.Generator().manual_seed(1234)
    return {n: torch.randn(p.shape, generator=g) * 0.3 for n, p in model.named_parameters()}


def _run(model, tokens, targets, segments):
    model.zero_grad()
    loss, ntokens = model(tokens, targets, segment_ids=segments)
    loss.backward()
    return {
        "loss": loss.detach(),
        "ntokens": ntokens,
        "target_lp": model.target_log_probs(tokens, targets, segments).detach(),
        "full_lp": model.gather_log_probs(model.log_probs(tokens, segments)).detach(),
    }


def _tp_matches_tp1(tp):
    ctx = parallel.initialize_parallel(parallel.ParallelDims(tp=tp), seed=5)
    group = parallel.tensor_parallel_group()
    tokens, targets, segments = _batch()
    report = {}
    for name, overrides in CONFIGS.items():
        cfg = tiny(VOCAB, **overrides)
        reference = AdaptiveLM(cfg, tp_group=parallel.ShapeOnlyGroup(1))
        model = AdaptiveLM(cfg, tp_group=group)
        report[f"{name}_init_differs"] = _init_differences(reference, model, group)
        full = _reference_weights(reference)
        load_weights(reference, full)
        load_weights(model, full)
        want, got = _run(reference, tokens, targets, segments), _run(model, tokens, targets, segments)
        errors = {k: _rel_err(got[k], want[k]) for k in ("loss", "target_lp", "full_lp")}
        errors["ntokens_equal"] = bool(got["ntokens"] == want["ntokens"])
        ref_params = dict(reference.named_parameters())
        # k_proj.bias gradients are zero in exact arithmetic (softmax is shift invariant) and hold only
        # rounding noise (~1e-6): measure each error against at least 1% of the model's largest gradient.
        floor = 1e-2 * max(float(p.grad.abs().max()) for p in ref_params.values())
        grad_errors = {}
        for pname, param in model.named_parameters():
            ref = ref_params[pname]
            gathered = gather_one_piece(param, param.grad, ref.shape[getattr(param, "partition_dim", 0)], group)
            grad_errors[pname] = _rel_err(gathered, ref.grad, floor)
        errors["grad"] = max(grad_errors.values())
        errors["worst_grad"] = max(grad_errors, key=grad_errors.get)
        errors["num_params"] = len(grad_errors)
        report[name] = errors
    report["dropout"] = _dropout_streams(group)
    del ctx
    parallel.destroy_parallel()
    return report


def _init_differences(reference, model, group) -> list[str]:
    """Names of the TP model's fresh parameters that are not exactly the TP = 1 model's (none expected)."""
    ref_params = dict(reference.named_parameters())
    differs = []
    for pname, param in model.named_parameters():
        ref = ref_params[pname]
        gathered = gather_one_piece(param, param.detach(), ref.shape[getattr(param, "partition_dim", 0)], group)
        if not torch.equal(gathered, ref.detach()):
            differs.append(pname)
    return differs


def _dropout_streams(group):
    """Replicated-activation dropout agrees over TP; the sharded stream differs per TP rank."""
    default = torch.rand(4)
    with parallel.model_parallel_rng():
        sharded = torch.rand(4)
    both = [torch.empty(8) for _ in range(group.size())]
    dist.all_gather(both, torch.cat([default, sharded]), group=group)
    return {
        "default_equal": all(torch.equal(both[0][:4], b[:4]) for b in both),
        "sharded_distinct": len({tuple(b[4:].tolist()) for b in both}) == group.size(),
    }


def _rel_err(got, want, floor=1e-30):
    got, want = got.double(), want.double()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), "infinite entries differ"
    scale = want[finite].abs().max().clamp(min=floor)
    return float((got[finite] - want[finite]).abs().max() / scale)


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_model_equals_single_rank(tp):
    reports = run_on_ranks(_tp_matches_tp1, nprocs=tp, timeout=240, tp=tp)
    for report in reports:
        assert report["dropout"] == {"default_equal": True, "sharded_distinct": True}
        for name in CONFIGS:
            assert report[f"{name}_init_differs"] == [], name
            errors = report[name]
            assert errors["ntokens_equal"], name
            assert errors["num_params"] > 0
            for key in ("loss", "target_lp", "full_lp", "grad"):
                assert errors[key] <= 1e-5, (name, key, errors["worst_grad"], errors)
