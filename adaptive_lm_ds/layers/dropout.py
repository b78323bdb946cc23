"""Dropout from a uniform draw: the same distribution as ``F.dropout`` at about half its mask cost on CPU.

``F.dropout`` on CPU draws its mask with ``bernoulli_`` into a float tensor (on Intel CPUs through MKL's
integer Bernoulli stream, then converted), divides it by ``1 - p`` and multiplies: measured at about
6 ns per element for the mask alone on 1 thread, where ``torch.rand_like`` takes about 3. Here the mask
is ``rand_like(x) < 1 - p`` in place (float ``1.0``/``0.0``) with the scale folded in: each element is
kept with probability ``1 - p`` (to float32's uniform resolution, ``2**-24``: the comparison ``torch``'s
own non-MKL ``bernoulli`` makes) and scaled by ``1 / (1 - p)``, independently, from the current
generator (so TP ranks' RNG-stream rules are unchanged).
"""

from __future__ import annotations

import torch


def keep_mask(like: torch.Tensor, p: float, scale: float = 1.0) -> torch.Tensor:
    """``like``-shaped float mask: ``scale`` with probability ``1 - p``, else ``0`` (independent elements)."""
    mask = torch.rand_like(like).lt_(1.0 - p)
    return mask.mul_(scale) if scale != 1.0 else mask


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``: zero with probability ``p``, scale the rest by ``1 / (1 - p)``."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return x * keep_mask(x, p, 1.0 / (1.0 - p))


def residual_dropout_add(residual: torch.Tensor, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``residual + F.dropout(x, p, training)`` in one pass over the output (``addcmul``)."""
    if not training or p == 0.0:
        return residual + x
    if p >= 1.0:
        return residual + x * 0.0
    return torch.addcmul(residual, x, keep_mask(x, p, 1.0 / (1.0 - p)))
