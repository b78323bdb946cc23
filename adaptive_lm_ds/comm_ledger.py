"""Count every collective and point-to-point transfer a rank makes, and its bytes, while a block runs.

:class:`CommLedger` wraps the ``torch.distributed`` functions for the duration of a ``with`` block,
also where a library captured them at import (megatron-core's ``dist_all_gather_func``, DeepSpeed's
comm backend's ``all_gather_function``): every call site ends in one of these functions. Each call is
recorded as a :class:`Transfer` with the process group's axis (``tp``, ``dp``, ``pp``, ``world``, ...)
and its payload in bytes, counted the same way as :mod:`adaptive_lm_ds.comm_model`:

* all-reduce, broadcast, reduce: the tensor (every rank's buffer is that size);
* all-gather: the gathered (output) tensor; reduce-scatter: the full (input) tensor;
* send: the tensor sent (a receive is the other end of a send and is not counted again).

A tensor of at most :data:`SCALAR_ELEMENTS` (token counts, norms, flags, the pipeline's loss) or an
integer one of at most :data:`METADATA_ELEMENTS` (a partitioned activation's shape) is a *scalar*
transfer: these are listed apart, because the model leaves them out by design. A group of one rank is
axis ``self`` (DeepSpeed still calls the collective; nothing leaves the rank).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
import torch.distributed as dist

WRAPPED = (
    "all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "_all_gather_base",
    "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base", "send", "isend", "recv", "irecv",
    "all_to_all_single", "all_reduce_coalesced", "barrier",
)  # fmt: skip
RECEIVES = ("recv", "irecv")
SCALAR_ELEMENTS = 2  # token counts, norms, overflow flags, the pipeline's loss
METADATA_ELEMENTS = 16  # integer tensors this small are shapes (the pipeline's partition metadata)
SELF = "self"  # a group of one rank (e.g. DP at DP1): nothing leaves the rank


@dataclass(frozen=True)
class Transfer:
    op: str  # all_reduce, all_gather, reduce_scatter, broadcast, send, ...
    axis: str  # the process group: tp, dp, pp, tp+pp, world, or 'ranks a,b' for another group
    bytes: int
    numel: int
    floating: bool = True

    @property
    def scalar(self) -> bool:
        return self.numel <= (SCALAR_ELEMENTS if self.floating else METADATA_ELEMENTS)


def _normalised(op: str) -> str:
    if op in ("all_gather_into_tensor", "_all_gather_base"):
        return "all_gather"
    if op in ("reduce_scatter_tensor", "_reduce_scatter_base"):
        return "reduce_scatter"
    return "send" if op == "isend" else op


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _payload(op: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors whose size is the transfer's payload (module docstring)."""
    if op in ("all_gather", "all_gather_into_tensor", "_all_gather_base"):
        first = kwargs.get("tensor_list", kwargs.get("output_tensor", kwargs.get("output", args[0] if args else None)))
        return _tensors(first)
    if op in ("reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base"):
        full = kwargs.get("input_list", kwargs.get("input", args[1] if len(args) > 1 else None))
        return _tensors(full)
    if op == "all_reduce_coalesced":
        return _tensors(kwargs.get("tensors", args[0] if args else None))
    if op == "barrier":
        return []
    return _tensors(kwargs.get("tensor", args[0] if args else None))


class CommLedger:
    """``with CommLedger(axes) as ledger: ...``; then :attr:`transfers`, :meth:`totals`.

    ``axes``: ``{name: sorted global ranks}`` of this rank's groups (:func:`layout_axes`), to name a call's group.
    """

    def __init__(self, axes: dict[str, tuple[int, ...]]):
        self.axes = {ranks: name for name, ranks in axes.items()}
        self.transfers: list[Transfer] = []
        self._originals = {name: getattr(dist, name) for name in WRAPPED if hasattr(dist, name)}
        self._swapped: list[tuple[object, str, object]] = []
        self._depth = 0

    def _axis(self, group) -> str:
        ranks = tuple(sorted(dist.get_process_group_ranks(group if group is not None else dist.group.WORLD)))
        if len(ranks) == 1:
            return SELF
        return self.axes.get(ranks, "ranks " + ",".join(map(str, ranks)))

    def _peer_axis(self, peer: int) -> str:
        """The smallest named group holding this rank and ``peer`` (a pipeline neighbour: ``pp``)."""
        rank = dist.get_rank()
        named = [(len(r), n) for r, n in self.axes.items() if rank in r and peer in r]
        return min(named)[1] if named else f"ranks {rank},{peer}"

    def _wrap(self, op: str, original):
        def recorded(*args, **kwargs):
            if self._depth == 0 and op not in RECEIVES:
                tensors = _payload(op, args, kwargs)
                numel = sum(t.numel() for t in tensors)
                size = sum(t.numel() * t.element_size() for t in tensors)
                axis = self._peer_axis(kwargs.get("dst", args[1] if len(args) > 1 else None)) if op in (
                    "send", "isend") else self._axis(kwargs.get("group"))  # fmt: skip
                floating = all(t.is_floating_point() for t in tensors)
                self.transfers.append(Transfer(_normalised(op), axis, size, numel, floating))
            self._depth += 1  # torch's own nesting (send -> isend) is one transfer
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1

        return recorded

    def _capture_sites(self) -> list[object]:
        """Modules and objects that hold a ``torch.distributed`` function they looked up once."""
        import sys

        sites = [dist, dist.distributed_c10d]
        sites += [sys.modules[m] for m in ("megatron.core.tensor_parallel.mappings", "megatron.core.utils")
                  if m in sys.modules]  # fmt: skip
        from adaptive_lm_ds import deepspeed_compat

        backend = deepspeed_compat.comm_backend()
        return sites + ([backend] if backend is not None else [])

    def __enter__(self) -> CommLedger:
        wrappers = {id(f): (name, self._wrap(name, f)) for name, f in self._originals.items()}
        for site in self._capture_sites():
            for attr, value in list(vars(site).items()):
                if id(value) in wrappers and callable(value):
                    self._swapped.append((site, attr, value))
                    setattr(site, attr, wrappers[id(value)][1])
        return self

    def __exit__(self, *exc) -> None:
        for site, attr, value in reversed(self._swapped):
            setattr(site, attr, value)
        self._swapped.clear()

    def totals(self, scalars: bool = False) -> dict[tuple[str, str], dict[str, int]]:
        """``{(axis, op): {"calls": n, "bytes": b}}`` over the bulk transfers (or only the scalar ones)."""
        out: dict[tuple[str, str], dict[str, int]] = collections.defaultdict(lambda: {"calls": 0, "bytes": 0})
        for t in self.transfers:
            if t.scalar == scalars and t.op != "barrier" and t.axis != SELF:
                entry = out[(t.axis, t.op)]
                entry["calls"] += 1
                entry["bytes"] += t.bytes
        return dict(out)


def layout_axes() -> dict[str, tuple[int, ...]]:
    """This rank's groups by name, from the initialised layout (:func:`adaptive_lm_ds.parallel.current`)."""
    from adaptive_lm_ds import parallel

    dims = parallel.current()
    axes = {"world": tuple(range(dist.get_world_size()))}
    for name, group in (("tp", dims.tp_group), ("dp", dims.dp_group), ("pp", dims.pp_group)):
        ranks = tuple(sorted(dist.get_process_group_ranks(group)))
        if len(ranks) > 1:
            axes[name] = ranks
    return axes
