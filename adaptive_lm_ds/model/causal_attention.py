"""Causal self-attention with dropout that skips the masked upper triangle (training on CPU).

``F.scaled_dot_product_attention`` on CPU has a flash kernel that skips the masked blocks, but only with
``dropout_p == 0``; with dropout it falls back to dense maths over all ``T x T`` pairs (and builds, checks
and applies a ``T x T`` mask). Here the queries go in blocks of ``block`` rows: query block ``[s, e)``
attends to keys ``[0, e)`` only, and only its diagonal ``block x block`` tile is masked. At ``T = 512``,
``block = 128`` that is 10/16 of the dense work, in the scores, the softmax, the dropout and both
products, forward and backward.

The maths is the dense one: ``P = softmax(q k^T / sqrt(hd) + causal)``, ``P_d = P * m / (1 - p)`` with
``m ~ Bernoulli(1 - p)`` independent per element (the same distribution as SDPA's dropout, drawn from the
current generator), ``out = P_d v``; the mask is :func:`~adaptive_lm_ds.layers.dropout.keep_mask`'s, and
``1 / (1 - p)`` is applied to ``out`` (``[N, T, hd]``) rather than to the tiles. Backward (per block,
from the saved ``P`` and ``P * m``; ``g = dout / (1 - p)``)::

    dv += (P * m)^T g;   P * dP = (g v^T) * (P * m)
    dS = P * dP - P * rowsum(P * dP)
    dq = dS k / sqrt(hd);  dk += dS^T q / sqrt(hd)
"""

from __future__ import annotations

import math

import torch

from adaptive_lm_ds.layers.dropout import keep_mask

QUERY_BLOCK = 128


def _blocks(length: int, block: int):
    """``(start, end)`` of each query block."""
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def _diagonal_mask(size: int, device) -> torch.Tensor:
    """``[size, size]`` True above the diagonal (the future keys of a query block's own tile)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(1)


class _BlockCausalAttention(torch.autograd.Function):
    """``q, k, v [N, T, hd]`` (contiguous) -> ``[N, T, hd]``; module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, dropout_p: float, block: int):
        length = q.shape[1]
        q = q * (1.0 / math.sqrt(q.shape[-1]))  # scaled once here, not on every score tile
        out = torch.empty_like(v)
        probs, kept = [], []
        for start, end in _blocks(length, block):
            scores = torch.bmm(q[:, start:end], k[:, :end].transpose(1, 2))  # [N, b, end]
            scores[:, :, start:].masked_fill_(_diagonal_mask(end - start, q.device), float("-inf"))
            prob = torch.softmax(scores, dim=-1)
            prob_kept = keep_mask(prob, dropout_p).mul_(prob) if dropout_p > 0.0 else prob  # P * m
            out[:, start:end] = torch.bmm(prob_kept, v[:, :end])
            probs.append(prob)
            kept.append(prob_kept)
        keep_scale = 1.0 / (1.0 - dropout_p)
        if dropout_p > 0.0:
            out.mul_(keep_scale)  # P_d v = (P * m) v / (1 - p): the scale on [N, T, hd], not on the tiles
        ctx.save_for_backward(q, k, v, *probs, *kept)
        ctx.block, ctx.keep_scale = block, keep_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *saved = ctx.saved_tensors
        spans = _blocks(q.shape[1], ctx.block)
        probs, kept = saved[: len(spans)], saved[len(spans) :]
        grad_out = grad_out * ctx.keep_scale  # so that (P * m) stands for P_d below
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        for (start, end), prob, prob_kept in zip(spans, probs, kept):
            g = grad_out[:, start:end]
            grad_v[:, :end] += torch.bmm(prob_kept.transpose(1, 2), g)
            grad_scores = torch.bmm(g, v[:, :end].transpose(1, 2)).mul_(prob_kept)  # P * dP  [N, b, end]
            row = grad_scores.sum(dim=-1, keepdim=True)
            grad_scores.addcmul_(prob, row, value=-1.0)  # dS = P * dP - P * rowsum(P * dP)
            grad_q[:, start:end] = torch.bmm(grad_scores, k[:, :end])
            grad_k[:, :end] += torch.bmm(grad_scores.transpose(1, 2), q[:, start:end])
        grad_q.mul_(1.0 / math.sqrt(q.shape[-1]))  # q was saved scaled: grad_k above already carries the scale
        return grad_q, grad_k, grad_v, None, None


def block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, block: int = QUERY_BLOCK
) -> torch.Tensor:
    """Causal attention of ``q, k, v [B, H, T, hd]``, dropout ``dropout_p`` on the probabilities -> ``[B, H, T, hd]``.

    Equal to ``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)`` (the same
    function with ``dropout_p = 0``, the same distribution otherwise); queries and keys are the same
    positions (no cache, no segment mask).
    """
    batch, heads, length, head_dim = q.shape

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch * heads, length, head_dim).contiguous()

    out = _BlockCausalAttention.apply(flat(q), flat(k), flat(v), dropout_p, block)
    return out.view(batch, heads, length, head_dim)
