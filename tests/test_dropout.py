"""The uniform-draw dropout has F.dropout's distribution: each element 0 or x / (1 - p), kept with 1 - p."""

import torch

from adaptive_lm_ds.layers.dropout import dropout, residual_dropout_add


def _binomial_ok(kept: torch.Tensor, p: float) -> bool:
    n = kept.numel()
    return abs((1 - kept.float().mean().item()) - p) < 4 * (p * (1 - p) / n) ** 0.5  # 4 standard deviations


def test_each_element_is_zero_or_scaled_and_dropped_with_probability_p():
    p = 0.3
    x = torch.rand(200, 500) + 0.5  # no zeros of its own
    out = dropout(x, p, training=True)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    assert _binomial_ok(kept, p)


def test_gradient_is_the_same_mask_and_scale():
    p = 0.1
    x = (torch.rand(64, 300) + 0.5).requires_grad_()
    out = dropout(x, p, training=True)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, (out != 0).float() / (1 - p))


def test_residual_add_equals_residual_plus_dropout_of_the_same_draw():
    p = 0.2
    residual, x = torch.randn(8, 16, 32), torch.randn(8, 16, 32)
    torch.manual_seed(5)
    fused = residual_dropout_add(residual, x, p, training=True)
    torch.manual_seed(5)
    separate = residual + dropout(x, p, training=True)
    torch.testing.assert_close(fused, separate)


def test_identity_in_eval_and_at_p_zero():
    x, residual = torch.randn(4, 5), torch.randn(4, 5)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    torch.testing.assert_close(residual_dropout_add(residual, x, 0.5, training=False), residual + x)


def test_p_one_drops_everything():
    x = torch.randn(3, 4)
    assert torch.count_nonzero(dropout(x, 1.0, training=True)) == 0
