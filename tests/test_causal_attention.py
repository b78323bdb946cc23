"""The query-block causal attention equals SDPA's causal attention; its dropout is SDPA's distribution."""

import pytest
import torch
import torch.nn.functional as F

from adaptive_lm_ds.model.causal_attention import block_causal_attention


def _qkv(batch=2, heads=3, length=11, head_dim=4, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, length, heads, head_dim, generator=generator, dtype=dtype).transpose(1, 2).requires_grad_()
        for _ in range(3)
    ]  # [B, H, T, hd] views of [B, T, H, hd], as the model's heads are


@pytest.mark.parametrize("block", [1, 4, 5, 11, 16])
def test_without_dropout_equals_sdpa_causal_forward_and_backward(block):
    q, k, v = _qkv()
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.randn_like(reference)
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad)

    out = block_causal_attention(q, k, v, 0.0, block=block)
    grads = torch.autograd.grad(out, (q, k, v), grad)

    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads, reference_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_dropout_zeroes_or_rescales_each_causal_probability():
    """With ``v = I`` the output is the dropped probability matrix itself: each entry is 0 or ``P / (1 - p)``."""
    p, length = 0.25, 64
    q, k, _ = (t.detach() for t in _qkv(batch=4, heads=4, length=length, head_dim=length))
    identity = torch.eye(length).expand(4, 4, length, length)
    probs = block_causal_attention(q, k, identity, 0.0, block=16)
    torch.manual_seed(1)
    dropped = block_causal_attention(q, k, identity, p, block=16)

    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], probs[kept] / (1 - p))
    assert not kept.triu(1).any()  # never a future key
    causal = torch.ones(length, length, dtype=torch.bool).tril().expand_as(kept)
    n = int(causal.sum())
    dropped_fraction = 1 - int(kept.sum()) / n
    assert abs(dropped_fraction - p) < 4 * (p * (1 - p) / n) ** 0.5  # binomial: 4 standard deviations


def test_backward_with_dropout_is_the_derivative_of_its_forward():
    """The same mask on every call (the generator reseeded): ``gradcheck`` against finite differences."""
    q, k, v = _qkv(batch=1, heads=2, length=7, head_dim=3, dtype=torch.float64)

    def attention(q, k, v):
        torch.manual_seed(3)
        return block_causal_attention(q, k, v, 0.3, block=3)

    assert torch.autograd.gradcheck(attention, (q, k, v))
