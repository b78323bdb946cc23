"""Fused, vocabulary-parallel ``log p(target)``: megatron-core's ``VocabParallelCrossEntropy`` recipe, generalised.

The recipe (megatron/core/tensor_parallel/cross_entropy.py): all-reduced max, then in place
``exp(logits - max)``, an all-reduced sum of exponentials and of the target logit, and a backward that
turns the saved softmax into ``(softmax - onehot) * grad`` in place. The ``[N, rows]`` logits buffer
becomes the softmax and then the gradient, so it is the only ``[N, rows]`` tensor of the loss (the
unfused graph held four: masked logits, ``logsumexp``'s softmax, ``gather``'s scattered zeros, their sum).

megatron's function itself does not fit the adaptive softmax: it reads the global TP group (ours is a
layer argument), assumes the columns are one evenly split vocabulary with no padding (our bands pad to
``rows_per_rank * tp``), and cannot take the head's *replicated* cluster logits, which must enter the
normaliser once, not once per rank. Here padding columns are excluded by slicing, the replicated block
is added after the reduction, and the two sums travel in one all-reduce (two collectives in all).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _VocabParallelLogProb(torch.autograd.Function):
    """See :func:`vocab_parallel_log_prob`. Consumes ``local_logits`` (in place when fp32), as megatron's."""

    @staticmethod
    def forward(ctx, local_logits, replicated, columns, real_rows: int, group):
        rows = local_logits.shape[-1]
        collective = group.size() > 1 and local_logits.shape[0] > 0  # token sets agree over TP
        compute = torch.promote_types(local_logits.dtype, torch.float32)  # fp32 at least (fp64 in checks)
        logits = local_logits.to(compute)
        words = logits[:, :real_rows]
        owned = (columns >= 0) & (columns < real_rows)
        if real_rows:
            maximum = words.amax(-1)
            picked = torch.where(owned, words.gather(-1, torch.where(owned, columns, 0).unsqueeze(-1)).squeeze(-1), 0.0)
        else:  # a rank holding only padding rows of a small band
            maximum = logits.new_full(columns.shape, float("-inf"))
            picked = logits.new_zeros(columns.shape)
        rep = replicated.to(compute) if replicated is not None else None
        if rep is not None:
            maximum = torch.maximum(maximum, rep.amax(-1))
        if collective:
            dist.all_reduce(maximum, op=dist.ReduceOp.MAX, group=group)
        words.sub_(maximum.unsqueeze(-1)).exp_()
        sums = torch.stack([picked, words.sum(-1)])
        if collective:
            dist.all_reduce(sums, group=group)
        picked, sum_exp = sums.unbind(0)
        rep_prob = None
        if rep is not None:
            on_rep = columns >= rows
            rep_picked = rep.gather(-1, torch.where(on_rep, columns - rows, 0).unsqueeze(-1)).squeeze(-1)
            picked = torch.where(on_rep, rep_picked, picked)
            rep_prob = torch.exp(rep - maximum.unsqueeze(-1))
            sum_exp = sum_exp + rep_prob.sum(-1)
            rep_prob.div_(sum_exp.unsqueeze(-1))
        words.div_(sum_exp.unsqueeze(-1))
        ctx.real_rows, ctx.dtypes = real_rows, (local_logits.dtype, None if replicated is None else replicated.dtype)
        ctx.save_for_backward(logits, rep_prob, columns)
        return picked - maximum - torch.log(sum_exp)

    @staticmethod
    def backward(ctx, grad_lp):
        softmax, rep_prob, columns = ctx.saved_tensors
        real_rows, rows = ctx.real_rows, softmax.shape[-1]
        grad_lp = grad_lp.to(softmax.dtype)
        neg = -grad_lp.unsqueeze(-1)
        grad = softmax.mul_(neg)  # d log p / d logit = onehot - softmax
        grad[:, real_rows:].zero_()  # padding columns held raw logits; they take no gradient
        owned = (columns >= 0) & (columns < real_rows)
        grad.scatter_add_(
            -1, torch.where(owned, columns, 0).unsqueeze(-1), torch.where(owned, grad_lp, 0.0).unsqueeze(-1)
        )
        grad_rep = None
        if rep_prob is not None:
            on_rep = columns >= rows
            grad_rep = rep_prob.mul_(neg)
            grad_rep.scatter_add_(
                -1,
                torch.where(on_rep, columns - rows, 0).unsqueeze(-1),
                torch.where(on_rep, grad_lp, 0.0).unsqueeze(-1),
            )
            grad_rep = grad_rep.to(ctx.dtypes[1])
        return grad.to(ctx.dtypes[0]), grad_rep, None, None, None


def vocab_parallel_log_prob(
    local_logits: torch.Tensor,
    columns: torch.Tensor,
    real_rows: int,
    group,
    replicated: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N]`` fp32 exact ``log p(target)`` over all ranks' columns plus the replicated ones (counted once).

    ``local_logits [N, rows]``: this rank's shard, columns ``>= real_rows`` padding (ignored; their
    gradient is 0). ``replicated [N, K]``: the same on every TP rank (its gradient too). ``columns [N]``
    long, where each target is: ``c < real_rows`` a local column, ``rows + j`` replicated column ``j``,
    ``-1`` another rank's column. ``local_logits`` is consumed (it becomes the softmax and then the
    gradient, as in megatron's fused cross-entropy); pass a tensor nothing else reads.
    """
    return _VocabParallelLogProb.apply(local_logits, replicated, columns, real_rows, group)
