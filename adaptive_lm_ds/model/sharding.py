"""Move weights between the one-piece (TP = 1) model and one TP rank's shards.

A tensor-parallel parameter carries megatron-core's attributes ``tensor_model_parallel`` and
``partition_dim``; rank ``r`` holds the slice ``[r * n, (r + 1) * n)`` of that dimension (``n`` its local
size). Vocabulary tables are padded, so the last ranks' slices may run past the one-piece size: the
missing rows are padding (zeros). Everything else is replicated over TP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_tensor_parallel(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def shard_of(param: torch.Tensor, one_piece: torch.Tensor, tp_rank: int, shape: torch.Size | None = None):
    """This rank's part of the one-piece tensor ``one_piece`` for ``param`` (zeros where padding). ``shape``: the
    shard's shape where ``param`` does not have it (a ZeRO-3 partitioned parameter: its ``ds_shape``)."""
    if not is_tensor_parallel(param):
        return one_piece
    dim = param.partition_dim
    start, length, size = _rows(param, one_piece.shape[dim], tp_rank, shape)
    return _padded(one_piece.narrow(dim, start, length), dim, size)


def shard_from(param: torch.Tensor, tensors, name: str, tp_rank: int, shape: torch.Size | None = None):
    """:func:`shard_of` of ``tensors[name]``; from a lazy mapping with ``narrow`` (formats.streaming.LazyTensors)
    only this rank's slice is made, never the whole one-piece table."""
    if not is_tensor_parallel(param) or not hasattr(tensors, "narrow"):
        return shard_of(param, tensors[name], tp_rank, shape)
    dim = param.partition_dim
    start, length, size = _rows(param, tensors.shapes[name][dim], tp_rank, shape)
    return _padded(tensors.narrow(name, dim, start, length), dim, size)


def _rows(param: torch.Tensor, full: int, tp_rank: int, shape: torch.Size | None) -> tuple[int, int, int]:
    """``(start, length, size)``: the one-piece rows (of ``full``) along the partition dim this rank holds, and
    its shard's size there (the rest padding)."""
    size = (shape or param.shape)[param.partition_dim]
    start = min(tp_rank * size, full)
    return start, min(size, full - start), size


def _padded(part: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``part`` with zero rows appended along ``dim`` up to ``size`` (vocabulary padding)."""
    if part.shape[dim] == size:
        return part
    pad_shape = list(part.shape)
    pad_shape[dim] = size - part.shape[dim]
    return torch.cat([part, part.new_zeros(pad_shape)], dim=dim)


def tied_names(cfg) -> dict[str, str]:
    """``{alias: owner}``: the output layer's names of the tensors it shares with the input layer (one-piece
    names; docs/model.md, "Tying"). :meth:`BandWeights.tied_weight_attrs` is the one list of those tensors."""
    from adaptive_lm_ds.layers.adaptive_input import BandWeights

    return {f"output.{attr}": f"embed.tokens.{attr}" for attr in BandWeights.tied_weight_attrs(cfg)}


def one_piece_shapes(cfg) -> dict[str, torch.Size]:
    """Parameter shapes of the one-piece (TP = 1) model, built on the meta device (no memory)."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.model.lm import AdaptiveLM

    with torch.device("meta"):
        model = AdaptiveLM(cfg, parallel.ShapeOnlyGroup(1))
    return {name: p.shape for name, p in model.named_parameters()}


def gather_one_piece(param: torch.Tensor, tensor: torch.Tensor, size: int | None, group) -> torch.Tensor:
    """The one-piece tensor of ``tensor`` (``param``'s shard, or its gradient): all-gathered along the partition
    dim over ``group``, trimmed to the one-piece ``size`` of that dim (None: keep the padding)."""
    if not is_tensor_parallel(param) or group.size() == 1:
        return tensor if size is None else tensor.narrow(getattr(param, "partition_dim", 0), 0, size)
    pieces = [torch.empty_like(tensor) for _ in range(group.size())]
    dist.all_gather(pieces, tensor.contiguous(), group=group)
    out = torch.cat(pieces, dim=param.partition_dim)
    return out if size is None else out.narrow(param.partition_dim, 0, size)
