"""The parallel layout, in one object: :class:`ParallelDims`.

It owns the sizes (``tp``, ``pp``, ``dp``, the world), this rank's coordinates and groups, DeepSpeed's
pipeline topology and the MPU adaptor DeepSpeed's engine asks for, the one process-group
initialisation (:func:`init_process_group`, backend from the accelerator: gloo on CPU, nccl on CUDA)
and the seeding of the dropout RNG tracker. Nothing else in the package queries megatron-core's
``parallel_state`` or starts a process group; ask :func:`current` instead.

Rank order is tensor-parallel fastest, then data, then pipeline: megatron-core's default
``tp-cp-ep-dp-pp`` order with cp = ep = 1 and DeepSpeed's ``PipeModelDataParallelTopology``
(axes pipe, data, model) agree, and :func:`initialize_parallel` asserts it group by group.
megatron-core's ``parallel_state`` stays the group builder underneath (its TP layers read it).

Single-process use (unit tests, tools): ``initialize_parallel(ParallelDims())`` with no process group
creates a world-size-1 group (the accelerator's backend) itself (and :func:`destroy_parallel` removes
it again). The model always needs megatron-core's tensor-parallel group, because megatron's mappings
assert a group even at TP = 1; a world-size-1 group keeps a single code path and costs nothing.

Dropout RNG: DeepSpeed's activation-checkpointing RNG tracker (CPU and GPU alike) is configured with
``parallel_state`` as its mpu. The default generator carries the same seed on every TP rank (dropout on
replicated activations must agree); :func:`model_parallel_rng` forks the tracker's per-TP-rank stream for
dropout on sharded activations (attention heads, FFN shard); initialisation uses layers/seeded_init.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.activation_checkpointing import checkpointing as ds_checkpointing
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from adaptive_lm_ds import ds_runtime
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.launch import port_in_use

_MODEL_PARALLEL_RNG = "model-parallel-rng"  # the name DeepSpeed's tracker uses for its TP stream


def _megatron():
    """megatron-core's ``parallel_state``, imported on first use: a multi-second import that starting a
    process group (every rank of the test harness, every tool's ``--help``) does not need."""
    from megatron.core import parallel_state

    return parallel_state


class LayoutError(UserError, ValueError):
    """A parallel layout that does not fit the job; the message says what to change. It follows from the
    layout flags and the world size, the same on every rank, so it is printed once."""

    same_on_every_rank = True


class ParallelNotInitialized(RuntimeError):
    """The model needs :func:`initialize_parallel` first."""


@dataclass(frozen=True)
class ParallelDims:
    """Tensor-, pipeline- and data-parallel sizes (``tp * pp * dp`` = the world size), and, once
    :func:`initialize_parallel` returned it, this rank's place in them.

    Sizes alone (``ParallelDims(tp=2)``) are a plain value: compared, stored in checkpoint records
    (:meth:`to_record` / :meth:`from_record`), planned with. The initialised instance also carries the
    run's ``seed`` and DeepSpeed's ``topology``; its rank and group accessors read megatron-core's groups.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    seed: int | None = field(default=None, compare=False, repr=False)
    topology: PipeModelDataParallelTopology | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ sizes
    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @classmethod
    def for_world(cls, world_size: int, tp: int = 1, pp: int = 1) -> ParallelDims:
        """The layout with the given TP and PP whose data-parallel size fills ``world_size``."""
        if tp < 1 or pp < 1 or world_size % (tp * pp):
            raise LayoutError(
                f"world size {world_size} is not divisible by tp*pp = {tp}*{pp}; "
                "choose TP and PP sizes whose product divides the number of ranks"
            )
        return cls(tp, pp, world_size // (tp * pp))

    def validate(self, world_size: int) -> ParallelDims:
        if min(self.tp, self.pp, self.dp) < 1:
            raise LayoutError(f"{self} has a size below 1; every parallel size must be >= 1")
        if self.world_size != world_size:
            raise LayoutError(
                f"layout tp={self.tp} x pp={self.pp} x dp={self.dp} = {self.world_size} ranks, "
                f"but the job has {world_size}; launch {self.world_size} ranks or change the layout"
            )
        return self

    def to_record(self) -> dict[str, int]:
        """The sizes as a checkpoint record stores them: ``{"tp", "pp", "dp"}``."""
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp}

    @classmethod
    def from_record(cls, record: dict) -> ParallelDims:
        return cls(int(record["tp"]), int(record["pp"]), int(record["dp"]))

    def __reduce__(self):
        """Pickles as its sizes: the seed and topology belong to the process that initialised them."""
        return ParallelDims, (self.tp, self.pp, self.dp)

    def describe(self) -> str:
        return f"TP{self.tp} x PP{self.pp} x DP{self.dp}"

    # ------------------------------------------------------------------ this rank (after initialisation)
    # megatron-core's groups underneath; prev/next wrap around the pipeline; ranks of stages are global
    tp_rank = property(lambda self: _megatron().get_tensor_model_parallel_rank())
    pp_rank = property(lambda self: _megatron().get_pipeline_model_parallel_rank(), doc="This rank's stage.")
    dp_rank = property(lambda self: _megatron().get_data_parallel_rank())
    tp_group = property(lambda self: _megatron().get_tensor_model_parallel_group())
    pp_group = property(lambda self: _megatron().get_pipeline_model_parallel_group())
    dp_group = property(lambda self: _megatron().get_data_parallel_group())
    pp_prev_rank = property(lambda self: _megatron().get_pipeline_model_parallel_prev_rank())
    pp_next_rank = property(lambda self: _megatron().get_pipeline_model_parallel_next_rank())
    pp_last_rank = property(lambda self: _megatron().get_pipeline_model_parallel_last_rank())

    @property
    def deepspeed_mpu(self) -> _DeepSpeedMPU | None:
        """What ``deepspeed.initialize(mpu=...)`` needs: the groups under DeepSpeed's names at PP = 1;
        None under a pipeline, whose engine builds its grid from :attr:`topology` (same ranks)."""
        return _DeepSpeedMPU(self) if self.pp == 1 else None


class _DeepSpeedMPU:
    """megatron-core's groups under the names DeepSpeed's engine asks for.

    DeepSpeed's "model parallel" is our tensor parallelism.
    """

    def __init__(self, dims: ParallelDims):
        self.get_model_parallel_rank = self.get_tensor_model_parallel_rank = lambda: dims.tp_rank
        self.get_model_parallel_world_size = self.get_tensor_model_parallel_world_size = lambda: dims.tp
        self.get_model_parallel_group = self.get_tensor_model_parallel_group = lambda: dims.tp_group
        self.get_data_parallel_rank = lambda: dims.dp_rank
        self.get_data_parallel_world_size = lambda: dims.dp
        self.get_data_parallel_group = lambda: dims.dp_group


_CURRENT: ParallelDims | None = None
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
    """The one process-group initialisation: the launcher's world, the accelerator's backend, wrapped by
    DeepSpeed. Does nothing when a group exists.

    A plain ``python`` run (no ``RANK``) is a world of one: with ``world_of_one`` a TCP one on loopback
    (training, whose DeepSpeed engine reads the launcher's variables), otherwise an in-process
    ``HashStore`` one that :func:`destroy_parallel` removes again (tests, tools). Under a launcher,
    DeepSpeed's shared-memory op is loaded from this venv first (a stale build lock raises
    ``ds_runtime.StaleBuildLock`` instead of hanging) and each rank's ``/dev/shm`` buffer name is unlinked
    once all ranks have mapped it.
    """
    global _OWN_PROCESS_GROUP
    if dist.is_initialized():
        return
    ds_runtime.default_environment()  # DeepSpeed's comm backend may JIT-build its shm op: keep it in the venv
    if "RANK" not in os.environ and not world_of_one:
        accelerator_device()
        dist.init_process_group(accelerator_backend(), store=dist.HashStore(), rank=0, world_size=1)
        _OWN_PROCESS_GROUP = True
        return
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
    ds_runtime.load_shm_op()
    accelerator_device()
    try:
        deepspeed.init_distributed(dist_backend=accelerator_backend(), auto_mpi_discovery=False)
    except dist.DistNetworkError as e:
        raise port_in_use_error(e) from None
    ds_runtime.release_shm_buffer()


def port_in_use_error(error: Exception) -> Exception:
    """:class:`PortInUseError` when ``error`` is torch's EADDRINUSE at rendezvous, else ``error`` itself."""
    text = str(error)
    if "EADDRINUSE" not in text and "address already in use" not in text.lower():
        return error
    return port_in_use(os.environ.get("MASTER_PORT", "?"), os.environ.get("MASTER_ADDR", "?"))


def initialize_parallel(dims: ParallelDims = ParallelDims(), seed: int = 1234) -> ParallelDims:
    """Build megatron-core's groups and DeepSpeed's topology for ``dims``; seed the RNG tracker.

    Returns the initialised ``dims`` (with ``seed`` and ``topology``), which :func:`current` returns
    from then on. Without a process group, a world-size-1 ``dims`` gets an in-process one.
    """
    global _CURRENT
    if _CURRENT is not None:
        raise LayoutError("parallel state is already initialised; call destroy_parallel() first")
    if not dist.is_initialized():
        if dims.world_size != 1:
            raise LayoutError(
                f"layout {dims} needs {dims.world_size} ranks but torch.distributed is not "
                "initialised; launch with torchrun or deepspeed"
            )
        init_process_group()
    dims.validate(dist.get_world_size())
    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)  # wraps the group
    _megatron().initialize_model_parallel(tensor_model_parallel_size=dims.tp, pipeline_model_parallel_size=dims.pp)
    topology = PipeModelDataParallelTopology(num_pp=dims.pp, num_mp=dims.tp, num_dp=dims.dp)
    check_topology_matches(topology)
    ds_checkpointing.configure(mpu_=_megatron(), partition_activations=False)
    ds_checkpointing.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)  # the CPU generator too (on GPU the accelerator's differs from it)
    _CURRENT = dataclasses.replace(dims, seed=seed, topology=topology)
    return _CURRENT


def check_topology_matches(topology: PipeModelDataParallelTopology) -> None:
    """Assert that this rank's TP, DP and PP groups are the same ranks in both libraries."""
    rank = dist.get_rank()
    pairs = {
        "model": _megatron().get_tensor_model_parallel_group(),
        "data": _megatron().get_data_parallel_group(),
        "pipe": _megatron().get_pipeline_model_parallel_group(),
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
    global _CURRENT, _OWN_PROCESS_GROUP
    _megatron().destroy_model_parallel()
    ds_checkpointing.get_cuda_rng_tracker().reset()
    if _OWN_PROCESS_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None
    _OWN_PROCESS_GROUP = False


def shutdown() -> None:
    """A tool's end, however it ends: :func:`destroy_parallel`, then any process group a launcher started."""
    destroy_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def single_process(seed: int = 1234) -> Iterator[ParallelDims]:
    """``initialize_parallel(ParallelDims())`` for the duration of the block (tests, tools)."""
    dims = initialize_parallel(ParallelDims(), seed)
    try:
        yield dims
    finally:
        destroy_parallel()


def current() -> ParallelDims:
    """The initialised :class:`ParallelDims` of this process (raises a clear error before initialisation)."""
    if _CURRENT is None:
        raise ParallelNotInitialized(
            "the parallel state is not initialised; call adaptive_lm_ds.parallel.initialize_parallel("
            "ParallelDims(...)) before building the model (ParallelDims() for a single process)"
        )
    return _CURRENT


def tensor_parallel_group() -> dist.ProcessGroup:
    """megatron-core's TP group of this rank (raises a clear error before initialisation)."""
    return current().tp_group


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
