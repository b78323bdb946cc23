"""What autograd keeps for backward: the reference the memory planner's activation model is checked against."""

from __future__ import annotations

import torch


def saved_tensor_bytes(fn, exclude: set[int]) -> tuple[object, int]:
    """``fn()`` and the bytes of the distinct storages autograd saved meanwhile (``exclude``: data pointers
    of storages not to count, e.g. the parameters')."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())
