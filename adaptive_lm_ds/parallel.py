"""One process topology for megatron-core's ``parallel_state`` and DeepSpeed's pipeline topology.

Rank order is tensor-parallel fastest, then data, then pipeline: megatron-core's default
``tp-cp-ep-dp-pp`` order with cp = ep = 1 and DeepSpeed's ``PipeModelDataParallelTopology``
(axes pipe, data, model) agree, and :func:`initialize_parallel` asserts it group by group.

Single-process use (unit tests, tools): ``initialize_parallel(Layout())`` with no process group
creates a world-size-1 group (the accelerator's backend) itself (and :func:`destroy_parallel` removes
it again). The model
always needs megatron-core's tensor-parallel group, because megatron's mappings assert a group even at
TP = 1; a world-size-1 group keeps a single code path and costs nothing.

Dropout RNG: DeepSpeed's activation-checkpointing RNG tracker (CPU and GPU alike) is configured with
``parallel_state`` as its mpu. The default generator carries the same seed on every TP rank (dropout on
replicated activations must agree); :func:`model_parallel_rng` forks the tracker's per-TP-rank stream for
dropout on sharded activations (attention heads, FFN shard); initialisation uses layers/seeded_init.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.activation_checkpointing import checkpointing as ds_checkpointing
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state

from adaptive_lm_ds.errors import UserError

_MODEL_PARALLEL_RNG = "model-parallel-rng"  # the name DeepSpeed's tracker uses for its TP stream


class LayoutError(UserError, ValueError):
    """A parallel layout that does not fit the job; the message says what to change."""


class ParallelNotInitialized(RuntimeError):
    """The model needs :func:`initialize_parallel` first."""


@dataclass(frozen=True)
class Layout:
    """Tensor-, pipeline- and data-parallel sizes; ``tp * pp * dp`` must equal the world size."""

    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @classmethod
    def for_world(cls, world_size: int, tp: int = 1, pp: int = 1) -> Layout:
        """The layout with the given TP and PP whose data-parallel size fills ``world_size``."""
        if tp < 1 or pp < 1 or world_size % (tp * pp):
            raise LayoutError(
                f"world size {world_size} is not divisible by tp*pp = {tp}*{pp}; "
                "choose TP and PP sizes whose product divides the number of ranks"
            )
        return cls(tp, pp, world_size // (tp * pp))

    def validate(self, world_size: int) -> Layout:
        if min(self.tp, self.pp, self.dp) < 1:
            raise LayoutError(f"{self} has a size below 1; every parallel size must be >= 1")
        if self.world_size != world_size:
            raise LayoutError(
                f"layout tp={self.tp} x pp={self.pp} x dp={self.dp} = {self.world_size} ranks, "
                f"but the job has {world_size}; launch {self.world_size} ranks or change the layout"
            )
        return self


@dataclass(frozen=True)
class ParallelContext:
    layout: Layout
    topology: PipeModelDataParallelTopology
    seed: int


_CONTEXT: ParallelContext | None = None
_OWN_PROCESS_GROUP = False


def accelerator_backend() -> str:
    """The collective backend of DeepSpeed's accelerator: ``gloo`` on CPU (``ccl`` with oneCCL), ``nccl`` on CUDA."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def accelerator_device() -> torch.device:
    """This rank's compute device from DeepSpeed's accelerator (``DS_ACCELERATOR``, else what it detects).

    ``cpu`` on a CPU; otherwise device ``LOCAL_RANK`` of the accelerator, made current (nccl needs it
    before the process group is created).
    """
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator.set_device(index)
    return torch.device(accelerator.device_name(index))


def init_process_group(world_of_one: bool = False) -> None:
    """The launcher's process group with the accelerator's backend, wrapped by DeepSpeed.

    ``world_of_one``: a plain ``python`` run (no ``RANK``) becomes a TCP world of one (training, whose
    DeepSpeed engine needs a real group); otherwise such a run is left to :func:`initialize_parallel`'s
    in-process group. Does nothing when a group exists.
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        if not world_of_one:
            return
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
    accelerator_device()
    deepspeed.init_distributed(dist_backend=accelerator_backend(), auto_mpi_discovery=False)


def initialize_parallel(layout: Layout = Layout(), seed: int = 1234) -> ParallelContext:
    """Build megatron-core's groups and DeepSpeed's topology for ``layout``; seed the RNG tracker."""
    global _CONTEXT, _OWN_PROCESS_GROUP
    if _CONTEXT is not None:
        raise LayoutError("parallel state is already initialised; call destroy_parallel() first")
    if not dist.is_initialized():
        if layout.world_size != 1:
            raise LayoutError(
                f"layout {layout} needs {layout.world_size} ranks but torch.distributed is not "
                "initialised; launch with torchrun or deepspeed"
            )
        accelerator_device()
        dist.init_process_group(accelerator_backend(), store=dist.HashStore(), rank=0, world_size=1)
        _OWN_PROCESS_GROUP = True
    layout.validate(dist.get_world_size())
    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)  # wraps the group
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp
    )
    topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    check_topology_matches(topology)
    ds_checkpointing.configure(mpu_=parallel_state, partition_activations=False)
    ds_checkpointing.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)  # the CPU generator too (on GPU the accelerator's differs from it)
    _CONTEXT = ParallelContext(layout, topology, seed)
    return _CONTEXT


def check_topology_matches(topology: PipeModelDataParallelTopology) -> None:
    """Assert that this rank's TP, DP and PP groups are the same ranks in both libraries."""
    rank = dist.get_rank()
    pairs = {
        "model": parallel_state.get_tensor_model_parallel_group(),
        "data": parallel_state.get_data_parallel_group(),
        "pipe": parallel_state.get_pipeline_model_parallel_group(),
    }
    for axis, group in pairs.items():
        ds_ranks = next(g for g in topology.get_axis_comm_lists(axis) if rank in g)
        mc_ranks = dist.get_process_group_ranks(group)
        if sorted(ds_ranks) != sorted(mc_ranks):
            raise LayoutError(
                f"rank {rank}: DeepSpeed's {axis} group {ds_ranks} differs from megatron-core's {mc_ranks}"
            )


def destroy_parallel() -> None:
    """Undo :func:`initialize_parallel` (and the world-size-1 group it may have created)."""
    global _CONTEXT, _OWN_PROCESS_GROUP
    parallel_state.destroy_model_parallel()
    ds_checkpointing.get_cuda_rng_tracker().reset()
    if _OWN_PROCESS_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None
    _OWN_PROCESS_GROUP = False


def shutdown() -> None:
    """A tool's end, however it ends: :func:`destroy_parallel`, then any process group a launcher started."""
    destroy_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def single_process(seed: int = 1234) -> Iterator[ParallelContext]:
    """``initialize_parallel(Layout())`` for the duration of the block (tests, tools)."""
    ctx = initialize_parallel(Layout(), seed)
    try:
        yield ctx
    finally:
        destroy_parallel()


def context() -> ParallelContext:
    if _CONTEXT is None:
        raise ParallelNotInitialized(
            "the parallel state is not initialised; call adaptive_lm_ds.parallel.initialize_parallel(Layout(...)) "
            "before building the model (Layout() for a single process)"
        )
    return _CONTEXT


def tensor_parallel_group() -> dist.ProcessGroup:
    """megatron-core's TP group of this rank (raises a clear error before initialisation)."""
    context()
    return parallel_state.get_tensor_model_parallel_group()


@contextlib.contextmanager
def model_parallel_rng() -> Iterator[None]:
    """Run the block on this TP rank's own RNG stream (the tracker restores the default one after)."""
    tracker = ds_checkpointing.get_cuda_rng_tracker()
    if _MODEL_PARALLEL_RNG not in tracker.get_states():
        raise ParallelNotInitialized("the model-parallel RNG tracker is not seeded; call initialize_parallel()")
    with tracker.fork():
        yield


class ShapeOnlyGroup:
    """Stands in for a TP group of ``size`` ranks when only shapes matter (models on the meta device).

    megatron-core's layers read ``size()`` and ``rank()`` of the group they are given; nothing
    communicates while a model is built, so this is enough to build rank ``rank``'s real shapes.
    """

    def __init__(self, size: int, rank: int = 0):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank
