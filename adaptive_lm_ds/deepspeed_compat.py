"""Every use of DeepSpeed's private API, in one place, checked against the one supported version.

DeepSpeed is pinned (:data:`SUPPORTED_VERSION`). The adaptations below rely on names DeepSpeed does
not promise to keep; a renamed one would not fail loudly, it would silently clip twice, skew the
gradient norm, unpickle checkpoints with code execution or leave 69 MB files in ``/dev/shm``. So
:func:`check_supported` (run by every engine assembly before ``deepspeed.initialize``) refuses any
other DeepSpeed version and any missing patched attribute with one line naming the supported version,
and :func:`check_engine` does the same for the attributes a built engine must carry.

Adaptations (what, which DeepSpeed names, why):

* :func:`keep_fp32_grad_norm` -- ``DeepSpeedEngine._take_model_step``, ``clip_fp32_gradients``,
  ``_global_grad_norm`` (what ``get_global_grad_norm`` reads) and the optimizer's ``overflow`` flag that
  ``_take_model_step`` reads: a plain fp32 engine clips with a norm it throws away, computes none without
  clipping, counts a pipeline's tied tensors twice, and applies a step with non-finite gradients.
* :func:`stage_pipeline_module` -- ``PipelineModule._build``, ``_index_tied_modules``, ``_layer_specs``,
  ``_local_start``/``_local_stop``, ``forward_funcs``, ``tied_modules``, ``tied_weight_attrs``, the
  ``ds_pipe_replicated`` flag: a stage is one pre-built module under the one-piece parameter names.
* :func:`install_checkpoint_engine` -- ``DeepSpeedEngine.checkpoint_engine``: every file DeepSpeed reads
  is unpickled weights-only (``checkpoint/safe_files.py``).
* :func:`skip_backward_allreduce` -- ``DeepSpeedEngine.enable_backward_allreduce``: at one data-parallel
  rank there is nothing to all-reduce, yet DeepSpeed copies every gradient into one flat buffer.
* :func:`relink_optimizer_state` -- ``DeepSpeedZeroOptimizer`` / ``BF16_Optimizer``'s
  ``_lazy_init_hp_params_optimizer_state`` and ``_hp_optimizer_states_linked``: the state writer
  (``formats/state_writer.py``) replaces the base optimizer's state over the flat partitions and must
  link DeepSpeed's per-parameter fragments to the new tensors again.
* :func:`zero3_partition` -- ``DeepSpeedZeroOptimizer_Stage3._get_param_partition_rank`` /
  ``_get_param_partition_world_size``: which slice of a parameter this ZeRO-3 rank holds, for the state writer.
* :func:`shm_buffer_name`, :func:`makes_shm_buffer` -- ``shm.cpp``'s ``SHM_BUFFER_NAME`` and name format,
  ``LOCAL_SIZE`` (``shm_interface.cpp``): the ``/dev/shm`` files DeepSpeed never removes
  (``ds_runtime.py``).

DeepSpeed is imported lazily: :mod:`adaptive_lm_ds.ds_runtime` uses the shm names before any program
has configured DeepSpeed's environment.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch

from adaptive_lm_ds.errors import UserError

SUPPORTED_VERSION = "0.19.8"
SHM_PREFIX = "deepspeed_allreduce_buffer"  # shm.cpp: #define SHM_BUFFER_NAME
SHM_SOURCE = Path("ops", "csrc", "cpu", "comm", "shm.cpp")  # inside the deepspeed package
SHM_NAME_FORMAT = '"%s_%d_%s_%s"'  # shm.cpp: SHM_BUFFER_NAME, getuid(), MASTER_ADDR, MASTER_PORT; then "_%d" rank

ENGINE_METHODS = ("_take_model_step", "clip_fp32_gradients", "get_global_grad_norm", "gradient_clipping")
ENGINE_ATTRIBUTES = ("_global_grad_norm", "enable_backward_allreduce", "checkpoint_engine")
PIPELINE_METHODS = ("_build", "_index_tied_modules", "_recursive_getattr")
PIPELINE_ATTRIBUTES = ("_layer_specs", "_local_start", "_local_stop", "forward_funcs", "tied_modules",
                       "tied_weight_attrs")  # fmt: skip
TIED_SPEC_ATTRIBUTES = ("key", "module_args", "tied_weight_attr")
FRAGMENT_OPTIMIZER_METHODS = ("_lazy_init_hp_params_optimizer_state",)  # ZeRO-1/2 and bf16 optimizers
FRAGMENT_OPTIMIZER_ATTRIBUTES = ("_hp_optimizer_states_linked",)  # set by their __init__
ZERO3_OPTIMIZER_METHODS = ("_get_param_partition_rank", "_get_param_partition_world_size")
CHECKPOINT_ENGINE_METHODS = ("load", "save")  # SafeCheckpointEngine overrides them and calls save
PIPE_REPLICATED = "ds_pipe_replicated"  # deepspeed.runtime.utils.PIPE_REPLICATED


class DeepSpeedCompatError(UserError, RuntimeError):
    """The installed DeepSpeed is not the one these adaptations were written and tested against."""


def _unsupported(what: str) -> DeepSpeedCompatError:
    import deepspeed

    return DeepSpeedCompatError(
        f"DeepSpeed {deepspeed.__version__} {what}; this project supports deepspeed=={SUPPORTED_VERSION} only: "
        f"pip install deepspeed=={SUPPORTED_VERSION} (make venv)"
    )


def _require(owner, names: tuple[str, ...], where: str) -> None:
    """Each of ``names`` on ``owner``: defined by the class itself (not inherited from a base whose behaviour
    we never checked), or present on an instance."""
    if isinstance(owner, type):
        missing = [n for n in names if n not in vars(owner)]
    else:
        missing = [n for n in names if not hasattr(owner, n)]
    if missing:
        raise _unsupported(f"has no {where}.{missing[0]} (patched here)")


def check_version(version: str | None = None) -> None:
    """The installed (or the given) DeepSpeed version is :data:`SUPPORTED_VERSION`."""
    import deepspeed

    release = (version or deepspeed.__version__).split("+")[0]  # a local build label (+hash) is the same release
    if release != SUPPORTED_VERSION:
        raise _unsupported("is installed")


@functools.cache
def _check_supported_once() -> None:
    check_version()
    import deepspeed
    from deepspeed.pipe import PipelineModule, TiedLayerSpec
    from deepspeed.runtime import utils as ds_utils
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    _require(deepspeed.DeepSpeedEngine, ENGINE_METHODS, "DeepSpeedEngine")
    _require(PipelineModule, PIPELINE_METHODS, "PipelineModule")
    _require(TorchCheckpointEngine, CHECKPOINT_ENGINE_METHODS, "TorchCheckpointEngine")
    for optimizer_class in _fragment_optimizer_classes():
        _require(optimizer_class, FRAGMENT_OPTIMIZER_METHODS, optimizer_class.__name__)
    _require(_zero3_optimizer_class(), ZERO3_OPTIMIZER_METHODS, _zero3_optimizer_class().__name__)
    if getattr(ds_utils, "PIPE_REPLICATED", None) != PIPE_REPLICATED:
        raise _unsupported(f"does not flag tied copies as {PIPE_REPLICATED}")
    if not _tied_spec_has_fields(TiedLayerSpec):
        raise _unsupported(f"has no TiedLayerSpec.{'/'.join(TIED_SPEC_ATTRIBUTES)}")
    source = Path(deepspeed.__file__).parent / SHM_SOURCE
    if source.is_file():  # the op's source ships in the wheel; no source, no op, no buffer
        text = source.read_text()
        if f'#define SHM_BUFFER_NAME "{SHM_PREFIX}"' not in text or SHM_NAME_FORMAT not in text:
            raise _unsupported(f"names its shm buffers differently ({source})")


def _tied_spec_has_fields(spec_class) -> bool:
    import inspect

    params = inspect.signature(spec_class.__init__).parameters
    return all(name in params for name in ("key", "typename", "tied_weight_attr"))


def _fragment_optimizer_classes() -> tuple[type, ...]:
    """DeepSpeed's optimizer wrappers that link per-parameter fragments to the flat fp32 state."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    return (DeepSpeedZeroOptimizer, BF16_Optimizer)


def _zero3_optimizer_class() -> type:
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    return DeepSpeedZeroOptimizer_Stage3


def check_supported() -> None:
    """At start-up (every engine assembly): the pinned version, and every DeepSpeed name patched here exists."""
    _check_supported_once()


def check_engine(engine) -> None:
    """After ``deepspeed.initialize``: the instance attributes the patches below write are there, on the
    engine and, for a ZeRO-1/2 or bf16 optimizer wrapper, on its optimizer."""
    _require(engine, ENGINE_ATTRIBUTES, type(engine).__name__)
    optimizer = getattr(engine, "optimizer", None)
    if isinstance(optimizer, _fragment_optimizer_classes()):
        _require(optimizer, FRAGMENT_OPTIMIZER_ATTRIBUTES, type(optimizer).__name__)


# ---------------------------------------------------------------- optimizer state fragments
def relink_optimizer_state(optimizer) -> None:
    """After the base optimizer's state over the flat partitions was replaced: link DeepSpeed's per-parameter
    fragments (what ``safe_set_full_optimizer_state`` writes through) to the new tensors. A wrapper without
    fragments (ZeRO-3) needs nothing."""
    if isinstance(optimizer, _fragment_optimizer_classes()):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def zero3_partition(optimizer, param) -> tuple[int, int]:
    """``(rank, world)``: which of ``world`` equal slices of ``param`` this ZeRO-3 rank holds."""
    return optimizer._get_param_partition_rank(param), optimizer._get_param_partition_world_size(param)


# ---------------------------------------------------------------- fp32 gradient norm
def keep_fp32_grad_norm(engine, norm_and_clip: Callable[[], object]) -> bool:
    """On a plain fp32 engine (no ZeRO, no fp16/bf16 optimizer), run ``norm_and_clip`` before every optimizer
    step instead of DeepSpeed's ``clip_fp32_gradients``; its result (the pre-clip global norm) is what
    ``engine.get_global_grad_norm()`` returns, and a step whose norm is not finite is skipped as DeepSpeed's
    wrappers skip one (``engine.was_step_applied()`` False, the lr schedule held). Returns False (nothing
    patched) where DeepSpeed's optimizer wrappers compute and keep the norm themselves."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return False
    take_model_step = engine._take_model_step
    optimizer = engine.optimizer  # the client's torch optimizer itself: no DeepSpeed wrapper on this engine

    def step_with_norm(lr_kwargs=None):
        norm = engine._global_grad_norm = norm_and_clip()
        # DeepSpeed's wrappers skip a step whose norm is not finite (one host read of it per update, inside
        # DeepSpeed); a client optimizer would apply it. The same read and skip, through DeepSpeed's own path:
        # ``_take_model_step`` reads ``optimizer.overflow`` (no lr-schedule step, was_step_applied() False).
        # Unavoidable here: NAG's momentum, AdamW's moments and step count and the host's update count
        # cannot be held back by a device flag without a second copy of the weights and optimizer state.
        optimizer.overflow = not bool(torch.isfinite(norm))
        skip = optimizer.overflow
        if skip:
            optimizer.step = _skipped_step  # this call only: the class's step shows again below
        try:
            take_model_step(lr_kwargs)
        finally:
            if skip:
                del optimizer.step

    step_with_norm.keeps_fp32_grad_norm = True  # what patched() looks for
    engine.clip_fp32_gradients = _clipped_elsewhere
    engine._take_model_step = step_with_norm
    return True


def _skipped_step(closure=None) -> None:
    """The client optimizer's step for an update with a non-finite gradient norm: nothing changes."""


def _clipped_elsewhere() -> None:
    """DeepSpeed's fp32 clipping, disabled: ``keep_fp32_grad_norm``'s step clipped with the right norm."""


# ---------------------------------------------------------------- engine attributes
def skip_backward_allreduce(engine) -> None:
    """One data-parallel rank, no ZeRO: nothing to all-reduce, but DeepSpeed would still copy every gradient
    into one flat buffer after backward."""
    engine.enable_backward_allreduce = False


def install_checkpoint_engine(engine, checkpoint_engine):
    """Every file this engine saves or loads goes through ``checkpoint_engine`` (plain or pipeline engine)."""
    engine.checkpoint_engine = checkpoint_engine
    return checkpoint_engine


def patched(engine) -> dict[str, bool]:
    """Which adaptations are in effect on ``engine`` (the compat test reads this off a real engine)."""
    from adaptive_lm_ds.checkpoint.safe_files import SafeCheckpointEngine

    return {
        "fp32_grad_norm": getattr(engine._take_model_step, "keeps_fp32_grad_norm", False)
        and engine.clip_fp32_gradients is _clipped_elsewhere,
        "checkpoint_engine": isinstance(engine.checkpoint_engine, SafeCheckpointEngine),
        "backward_allreduce_skipped": engine.enable_backward_allreduce is False,
    }


# ---------------------------------------------------------------- pipeline stage
@functools.cache
def stage_pipeline_module() -> type:
    """A ``PipelineModule`` base whose layers are callables over one pre-built stage module.

    DeepSpeed's ``_build`` registers each layer as a child named by its index and builds tied modules from
    their specs. Here a subclass supplies :meth:`stage_children` (the stage's parts, by name, in
    registration order) and :meth:`tied_module` (the stage part that holds a tied key's tensors); the
    layers themselves only run. DeepSpeed flags *every* parameter of a non-owner tied module
    ``ds_pipe_replicated`` (out of the gradient norm); here only the tied tensors keep the flag.
    """
    from deepspeed.pipe import PipelineModule, TiedLayerSpec

    class StagePipelineModule(PipelineModule):
        def stage_children(self, layers: list) -> list[tuple[str, object]]:
            raise NotImplementedError

        def tied_module(self, layer):
            raise NotImplementedError

        def _build(self) -> None:
            _require(self, PIPELINE_ATTRIBUTES, "PipelineModule")
            own = self._layer_specs[self._local_start : self._local_stop]
            layers = [spec.module_args[0] if isinstance(spec, TiedLayerSpec) else spec for spec in own]
            self.forward_funcs.extend(layers)
            del self.tied_modules  # the tied ends are the stage's own parts, registered below under their names
            self.tied_modules = {}
            for spec in own:
                if isinstance(spec, TiedLayerSpec):
                    self.tied_modules[spec.key] = self.tied_module(spec.module_args[0])
                    self.tied_weight_attrs[spec.key] = spec.tied_weight_attr
            for name, child in self.stage_children(layers):
                self.add_module(name, child)
            for p in self.parameters():
                setattr(p, PIPE_REPLICATED, False)

        def _index_tied_modules(self) -> dict:
            comms = super()._index_tied_modules()
            for comm in comms.values():
                tied = {id(self._recursive_getattr(comm["module"], attr)) for attr in comm["weight_attr"]}
                for p in comm["module"].parameters():
                    if id(p) not in tied:
                        setattr(p, PIPE_REPLICATED, False)
            return comms

    return StagePipelineModule


def is_pipe_replicated(p) -> bool:
    """True for a pipeline's non-owner copy of a tied tensor (counted on the owner stage only)."""
    return getattr(p, PIPE_REPLICATED, False)


def comm_backend():
    """DeepSpeed's communication backend object (``deepspeed.comm.comm.cdb``), or None before
    ``init_distributed``: it holds ``torch.distributed`` functions it looked up once (the ledger wraps them)."""
    from deepspeed.comm import comm

    return getattr(comm, "cdb", None)


# ---------------------------------------------------------------- shm buffers
def shm_buffer_name(rank: int, addr: str, port: str | int) -> str:
    """The ``/dev/shm`` name DeepSpeed's ``shm_initialize`` gives ``rank``'s buffer of the job at addr:port."""
    return f"{SHM_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def makes_shm_buffer(world_size: int) -> bool:
    """DeepSpeed's own condition (``shm_interface.cpp:initialize``): every rank on this machine."""
    local = os.environ.get("LOCAL_SIZE", "")
    return local.isdigit() and int(local) == world_size >= 1
