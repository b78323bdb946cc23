"""Adaptive softmax on one rank: a normalised full table, the loss read from it, and torch's reference."""

import pytest
import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.layers import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.model import AdaptiveLM

VOCAB = 150
UNTIED = dict(cutoffs=(20, 70), tie_adaptive_weights=False, tie_adaptive_proj=False)
VARIANTS = {
    "tied": dict(cutoffs=(20, 70)),
    "untied": UNTIED,
    "full_softmax": dict(
        adaptive_input=False, adaptive_softmax=False, tie_adaptive_weights=False, tie_adaptive_proj=False
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    with parallel.single_process(seed=0):
        yield


def _tokens(seed=0, shape=(3, 10)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, shape, generator=g), torch.randint(0, VOCAB, shape, generator=g)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_full_table_is_a_distribution(variant):
    model = AdaptiveLM(tiny(VOCAB, **VARIANTS[variant])).eval()
    tokens, _ = _tokens()
    full = model.gather_log_probs(model.log_probs(tokens))
    assert full.shape == (3, 10, VOCAB)
    total = torch.logsumexp(full.double(), dim=-1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_loss_is_minus_log_p_of_target_from_the_full_table(variant):
    model = AdaptiveLM(tiny(VOCAB, **VARIANTS[variant])).eval()
    tokens, targets = _tokens(seed=1)
    targets[0, :4] = model.cfg.padding_idx
    targets[1, 0] = 70 + model.cfg.padding_idx  # tail-local index == padding_idx: still a real word
    full = model.gather_log_probs(model.log_probs(tokens))
    picked = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = targets != model.cfg.padding_idx
    loss, ntokens = model(tokens, targets)
    assert loss.dtype == torch.float32
    assert int(ntokens) == int(keep.sum())
    torch.testing.assert_close(loss, -picked[keep].sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.target_log_probs(tokens, targets), picked, rtol=1e-5, atol=1e-5)


def test_untied_matches_torch_adaptive_log_softmax_with_loss():
    cfg = tiny(VOCAB, **UNTIED).validate()
    ours = VocabParallelAdaptiveSoftmax(cfg, parallel.tensor_parallel_group())
    torch.manual_seed(3)
    theirs = torch.nn.AdaptiveLogSoftmaxWithLoss(
        cfg.embed_dim, VOCAB, cutoffs=[20, 70], div_value=cfg.adaptive_softmax_factor, head_bias=False
    )
    with torch.no_grad():  # torch's head is [shortlist words..., clusters...], as fairseq's
        ours.table(0).weight.copy_(theirs.head.weight[:20])
        ours.cluster_proj.weight.copy_(theirs.head.weight[20:])
        for i, tail in enumerate(theirs.tail):
            ours.tail_projs[i].weight.copy_(tail[0].weight)
            ours.table(i + 1).weight.copy_(tail[1].weight)
    h = torch.randn(40, cfg.embed_dim, generator=torch.Generator().manual_seed(4))
    targets = torch.randint(2, VOCAB, (40,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours.gather_log_probs(ours.log_probs(h)), theirs.log_prob(h), rtol=1e-5, atol=1e-5)
    reference = theirs(h, targets)
    torch.testing.assert_close(ours.target_log_probs(h, targets), reference.output, rtol=1e-5, atol=1e-5)
    loss, ntokens = ours.loss(h, targets)
    torch.testing.assert_close(loss / ntokens, reference.loss, rtol=1e-5, atol=1e-6)


def test_tails_run_only_on_their_own_tokens():
    """A batch without tail targets never touches the tail projections (no wasted compute)."""
    cfg = tiny(VOCAB, **UNTIED).validate()
    layer = VocabParallelAdaptiveSoftmax(cfg, parallel.tensor_parallel_group())
    seen = []
    for proj in layer.tail_projs:
        proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    targets = torch.tensor([3, 5, 25, 19, 90, 91, 92])  # head x3, tail 0 x1, tail 1 x3
    layer.target_log_probs(torch.randn(7, cfg.embed_dim), targets)
    assert seen == [1, 3]


CUTOFF_IDS = torch.tensor([0, 2, 19, 20, 21, 69, 70, 71, VOCAB - 1])  # each side of both cutoffs (20, 70)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_targets_on_band_cutoffs_are_routed_to_their_band(variant):
    """Reference: the full normalised table, computed band by band; ids on a cutoff start the next band."""
    model = AdaptiveLM(tiny(VOCAB, **VARIANTS[variant])).eval()
    h = torch.randn(len(CUTOFF_IDS), model.cfg.embed_dim, generator=torch.Generator().manual_seed(6))
    full = model.gather_log_probs(model.output.log_probs(h))
    picked = full.gather(-1, CUTOFF_IDS.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(model.output.target_log_probs(h, CUTOFF_IDS), picked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_input_ids_on_band_cutoffs_look_up_their_band(variant):
    """Reference: row ``id - start`` of the id's own band table, through that band's projection."""
    model = AdaptiveLM(tiny(VOCAB, **VARIANTS[variant])).eval()
    got = model.embed.tokens(CUTOFF_IDS)
    for i, token in enumerate(CUTOFF_IDS.tolist()):
        (weight,) = [w for w in model.embed.bands if w.band.start <= token < w.band.end]
        row = weight.table.weight[token - weight.band.start]
        want = row if weight.proj is None else weight.proj(row)
        torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_adaptive_loss_drops_only_the_tail_term_of_tail_local_padding(variant):
    """fairseq's adaptive_loss: target ``start_i + padding_idx`` scores only log p_head(cluster i).

    Reference from the full table: a dropped word's term is the band's total probability (its
    cluster's head probability); every other word keeps log p(word). Loss and gradients must agree.
    """
    from adaptive_lm_ds.layers.adaptive_softmax import set_criterion

    model = AdaptiveLM(tiny(VOCAB, **VARIANTS[variant])).eval()
    set_criterion(model, "adaptive_loss")
    tokens, targets = _tokens(seed=2)
    pad = model.cfg.padding_idx
    targets[0, :3] = 20 + pad  # tail 0, tail-local index == padding_idx
    targets[1, :2] = 70 + pad  # tail 1, likewise
    targets[2, 0] = pad
    keep = targets != pad
    loss, ntokens = model(tokens, targets)
    (loss_grad,) = torch.autograd.grad(loss, [model.output.cluster_proj.weight])

    full = model.gather_log_probs(model.log_probs(tokens))
    picked = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    for start, end in ((20, 70), (70, VOCAB)):
        dropped = targets == start + pad
        picked = torch.where(dropped, torch.logsumexp(full[..., start:end], -1), picked)
    reference = -picked[keep].sum()
    (ref_grad,) = torch.autograd.grad(reference, [model.output.cluster_proj.weight])
    assert int(ntokens) == int(keep.sum())
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss_grad, ref_grad, rtol=1e-4, atol=1e-6)
    set_criterion(model, "nll")  # the exact NLL differs exactly by those tail terms
    nll, _ = model(tokens, targets)
    assert float((nll - loss).detach()) > 1e-3
