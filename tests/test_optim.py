"""NAG against fairseq's own numbers; Adam/AdamW builders against fairseq's Adam update rule."""

import json

import pytest
import torch

from adaptive_lm_ds.optim.config import OptimConfig
from adaptive_lm_ds.optim.optimizers import NAG, OptimizerConfigError, build_optimizer


def _nag_section(fixture_dir):
    return json.loads((fixture_dir / "expected.json").read_text())["nag"]


def _run_nag(section, steps, optimizer=None, param=None):
    """Apply ``steps`` of the fixture's (grad, lr) pairs; returns (param, optimizer, params after each)."""
    if param is None:
        param = torch.nn.Parameter(torch.tensor(section["p0"], dtype=torch.float64))
    if optimizer is None:
        optimizer = NAG(
            [param],
            lr=section["initial_lr_lr_old"],
            momentum=section["momentum"],
            weight_decay=section["weight_decay"],
        )
    after = []
    for grad, lr in steps:
        for group in optimizer.param_groups:
            group["lr"] = lr
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        after.append(param.detach().clone())
    return param, optimizer, after


def test_nag_matches_fairseq_every_step(fairseq_optim_fixture):
    section = _nag_section(fairseq_optim_fixture)
    assert len(set(section["lrs"])) > 1  # the lr changes, so lr_old rescaling is exercised
    _, _, after = _run_nag(section, list(zip(section["grads"], section["lrs"])))
    for step, (got, expected) in enumerate(zip(after, section["params_after_each_step"])):
        expected = torch.tensor(expected, dtype=torch.float64)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=f"step {step}")


def test_nag_state_dict_round_trip_resumes_exactly(fairseq_optim_fixture):
    section = _nag_section(fairseq_optim_fixture)
    steps = list(zip(section["grads"], section["lrs"]))
    param, optimizer, _ = _run_nag(section, steps[:2])
    saved = optimizer.state_dict()
    assert saved["param_groups"][0]["lr_old"] == section["lrs"][1]

    resumed_param = torch.nn.Parameter(param.detach().clone())
    resumed = NAG([resumed_param], lr=999.0, momentum=section["momentum"], weight_decay=section["weight_decay"])
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr_old"] == section["lrs"][1]
    _, _, after = _run_nag(section, steps[2:], optimizer=resumed, param=resumed_param)
    expected = torch.tensor(section["params_after_each_step"][-1], dtype=torch.float64)
    torch.testing.assert_close(after[-1], expected, rtol=0, atol=1e-12)


def test_nag_updates_bf16_parameters_through_fp32():
    torch.manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(8))
    half = torch.nn.Parameter(ref.detach().to(torch.bfloat16))
    grad = torch.randn(8)
    for p in (ref, half):
        p.grad = grad.to(p.dtype)
        NAG([p], lr=0.1, momentum=0.9, weight_decay=0.01).step()
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref.detach(), rtol=1e-2, atol=1e-2)


def test_nag_rejects_bad_momentum():
    with pytest.raises(OptimizerConfigError, match="momentum"):
        NAG([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=1.5)


def _fairseq_adam_reference(p, grads, lr, betas, eps, wd):
    """fairseq/optim/adam.py's loop written out: decoupled decay on p, then the bias-corrected step."""
    p = p.clone()
    exp_avg = torch.zeros_like(p)
    exp_avg_sq = torch.zeros_like(p)
    for step, g in enumerate(grads, start=1):
        exp_avg = betas[0] * exp_avg + (1 - betas[0]) * g
        exp_avg_sq = betas[1] * exp_avg_sq + (1 - betas[1]) * g * g
        denom = exp_avg_sq.sqrt() + eps
        step_size = lr * (1 - betas[1] ** step) ** 0.5 / (1 - betas[0] ** step)
        p = p - wd * lr * p
        p = p - step_size * exp_avg / denom
    return p


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_follows_fairseq_decoupled_weight_decay(name):
    torch.manual_seed(1)
    p0 = torch.randn(6, dtype=torch.float64)
    grads = [torch.randn(6, dtype=torch.float64) for _ in range(5)]
    param = torch.nn.Parameter(p0.clone())
    optimizer = build_optimizer(OptimConfig(optimizer=name, lr=1e-2, weight_decay=0.1), [param])
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    for g in grads:
        param.grad = g
        optimizer.step()
    expected = _fairseq_adam_reference(p0, grads, 1e-2, (0.9, 0.999), 1e-8, 0.1)
    # eps is added to the un-bias-corrected sqrt in fairseq and the corrected one in torch: ~1e-8 apart
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)


def test_build_optimizer_nag_uses_the_given_momentum():
    optimizer = build_optimizer(
        OptimConfig(optimizer="NAG", lr=1.0, momentum=0.9), [torch.nn.Parameter(torch.zeros(1))]
    )
    assert isinstance(optimizer, NAG) and optimizer.defaults["momentum"] == 0.9


def test_build_optimizer_rejects_unknown_name():
    with pytest.raises(OptimizerConfigError, match="choose one of nag, adam, adamw"):
        build_optimizer(OptimConfig(optimizer="sgd", lr=1.0), [torch.nn.Parameter(torch.zeros(1))])


def test_param_groups_have_a_fixed_count_and_cover_every_tensor_once():
    """DeepSpeed all-reduces per-group norms over model-parallel ranks: every rank needs the same count."""
    from adaptive_lm_ds.optim.optimizers import PARAM_GROUPS, group_bounds

    for sizes in ([10] * 40, [1, 500] + [3] * 30, list(range(1, 100))):
        bounds = group_bounds(sizes)
        assert len(bounds) == PARAM_GROUPS
        assert [i for a, b in bounds for i in range(a, b)] == list(range(len(sizes)))
    assert len(group_bounds([5, 5, 5])) == 3  # fewer tensors than groups: one each
    assert max(sum(s[a:b]) for s in [[10] * 160] for a, b in group_bounds(s)) == 100  # balanced


def test_bounded_param_groups_keep_one_set_of_settings():
    from adaptive_lm_ds.optim.optimizers import bounded_param_groups

    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(40)]
    optimizer = build_optimizer(OptimConfig(optimizer="nag", lr=0.5, momentum=0.9), bounded_param_groups(params))
    assert len(optimizer.param_groups) > 1
    assert [p for g in optimizer.param_groups for p in g["params"]] == params
    assert {(g["lr"], g["momentum"]) for g in optimizer.param_groups} == {(0.5, 0.9)}
