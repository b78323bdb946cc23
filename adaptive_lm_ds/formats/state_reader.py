"""Read a DeepSpeed training checkpoint of any layout as one layout-free :class:`TrainingState`, offline.

Where DeepSpeed keeps each rank's fp32 master weights and optimizer state depends on the ZeRO stage:

* **ZeRO-1/2, and the bf16 optimizer** (``[bf16_]zero_pp_rank_D_mp_rank_MM_optim_states.pt``): per param
  group, the DP rank's slice of one flat fp32 buffer (``single_partition_of_fp32_groups``) and the base
  optimizer's state over it (``base_optimizer_state``); ``param_slice_mappings`` says where each parameter's
  fragment lies in that slice (name -> ``(start, numel)``), as DeepSpeed's ``ds_to_universal`` decodes it. A
  parameter's local (TP-shard) tensor is its fragments over the DP ranks, in rank order.
* **ZeRO-3** (``zero_pp_rank_D_mp_rank_TT_*_states.pt``): per group a flat fp32 buffer laying out, parameter
  after parameter in ``param_shapes`` order, the DP rank's ``ceil(numel / DP)`` elements of each.
* **ZeRO-0** (``mp_rank_MM_model_states.pt``, one per stage): the module's weights are the masters and each
  stage's optimizer ``state_dict`` is keyed by the parameter's index in that stage's engine
  ``module.parameters()``: ``AdaptiveLM.parameters()`` with one stage; with a pipeline, the stage's parts in
  the order ``AdaptiveLMPipeline`` registers them (found by building the stage on the meta device).

``MM`` is DeepSpeed's model-parallel rank, ``pp_rank * TP + tp_rank`` (its pipeline grid's order). The TP
shards of a tensor are joined as in :mod:`adaptive_lm_ds.formats.export` (the dimension where a shard's
shape differs from the one-piece shape; vocabulary padding trimmed). Every file is checksum-verified and
opened weights-only (:func:`adaptive_lm_ds.checkpoint.load_file`); the returned tensors are lazy: each is
assembled when asked for, so a reader holds the loaded files plus one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.checkpoint import CheckpointError, CheckpointRecord, load_file, open_checkpoint
from adaptive_lm_ds.checkpoint import names as ckpt_names
from adaptive_lm_ds.formats.streaming import LazyTensors
from adaptive_lm_ds.formats.training_state import STATE_KEYS, TrainingState
from adaptive_lm_ds.model.lm import AdaptiveLM
from adaptive_lm_ds.model.sharding import one_piece_shapes, tied_names

# (name, optimizer state key or None for the fp32 weight) -> one TP rank's local tensor
LocalRead = Callable[[str, str | None], torch.Tensor]


class _Store(NamedTuple):
    """One TP rank's loaded files of one kind: ``read`` makes a local tensor, ``shapes`` says its shape first."""

    read: LocalRead
    shapes: dict[str, torch.Size]


def _optim_file(tag_dir: Path, dp: int, mp: int) -> Path:
    for prefix in ("", "bf16_"):
        path = tag_dir / f"{prefix}zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt"
        if path.is_file():
            return path
    raise CheckpointError(f"{tag_dir}: the optimizer partition of DP rank {dp}, model-parallel rank {mp} is missing")


class _SavedRanks:
    """The files of one checkpoint, each loaded once, when first needed: :meth:`local` reads one TP rank's
    tensors; ``groups`` holds a saved base optimizer's param groups and ``state_keys`` the state it keeps."""

    def __init__(self, tag_dir: Path, record: CheckpointRecord, names: list[str]):
        self.tag_dir, self.record, self.names = tag_dir, record, names
        self.dims = record.dims
        self.groups: list[dict] = []
        self.state_keys: set[str] = set()
        self.adam_step: int | None = None
        self._loaded: dict[tuple[str, int], _Store] = {}

    def _store(self, kind: str, tp_rank: int) -> _Store:
        if (kind, tp_rank) not in self._loaded:
            self._loaded[(kind, tp_rank)] = getattr(self, f"_{kind}")(tp_rank)
        return self._loaded[(kind, tp_rank)]

    def _kind(self, key: str | None) -> str:
        """Which files hold the weights (key None) or optimizer state ``key``: fp32 weights below ZeRO-3 are
        the module's own (the masters themselves); bf16/fp16 runs keep their fp32 masters in the partitions."""
        stage, precision = self.record.zero_stage, self.record.precision
        if stage == 3:
            return "zero3"
        if precision == "fp32" and (key is None or stage == 0):
            return "module" if key is None else "plain"
        return "partitioned"

    def local(self, tp_rank: int) -> LocalRead:
        return lambda name, key: self._store(self._kind(key), tp_rank).read(name, key)

    def local_shape(self, tp_rank: int, name: str, key: str | None) -> torch.Size:
        """The shape of TP rank ``tp_rank``'s shard of ``name``, without making it."""
        shapes = self._store(self._kind(key), tp_rank).shapes
        if name not in shapes:
            raise CheckpointError(f"{self.tag_dir}: parameter {name} is missing from the saved files")
        return shapes[name]

    def loaded_rank(self, key: str | None, prefer: int) -> int:
        """A TP rank whose files holding ``key`` are loaded already (any holds a replicated tensor), else
        ``prefer``: a rank never loads another saved rank's files it does not need."""
        return next((r for r in range(self.dims.tp) if (self._kind(key), r) in self._loaded), prefer)

    def load(self, key: str | None, tp_ranks: range | None = None) -> _SavedRanks:
        """Load the files of ``tp_ranks`` (default all) holding the weights (key None) or the optimizer state (any
        key: also the param groups, the state keys and Adam's step)."""
        for tp_rank in tp_ranks or range(self.dims.tp):
            self._store(self._kind(key), tp_rank)
        return self

    def _note_optimizer(self, optim: dict, states: list[dict]) -> None:
        """Remember the base optimizer's param groups (lr_old) and which state it keeps (Adam's step)."""
        if not self.groups:
            self.groups = [{k: v for k, v in g.items() if k != "params"} for g in optim["param_groups"]]
        for state in states:
            self.state_keys |= {k for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0}
            if "step" in state and self.adam_step is None:
                self.adam_step = int(torch.as_tensor(state["step"]).item())

    # ------------------------------------------------------------------ ZeRO-1/2 and the bf16 optimizer
    def _partitioned(self, tp_rank: int) -> _Store:
        wanted = set(self.names)
        where: dict[str, list[tuple[dict, int, int, int]]] = {}  # name -> [(file, group, start, numel)] by DP rank
        shapes: dict[str, torch.Size] = {}
        for pp_rank in range(self.dims.pp):
            mp = pp_rank * self.dims.tp + tp_rank
            model = load_file(self.tag_dir / ckpt_names.model_states_file(mp))
            for group in model.get("param_shapes") or []:
                shapes.update({name: torch.Size(shape) for name, shape in group.items() if name in wanted})
            for dp_rank in range(self.dims.dp):
                optim = load_file(_optim_file(self.tag_dir, dp_rank, mp))["optimizer_state_dict"]
                base = optim["base_optimizer_state"]
                self._note_optimizer(base, list(base["state"].values()))
                saved = {
                    "fp32": optim["single_partition_of_fp32_groups"],
                    "state": [base["state"].get(g, {}) for g in range(len(optim["single_partition_of_fp32_groups"]))],
                }
                for g, mapping in enumerate(optim["param_slice_mappings"]):
                    for name, fragment in mapping.items():
                        if name in wanted:
                            where.setdefault(name, []).append((saved, g, int(fragment.start), int(fragment.numel)))

        def read(name: str, key: str | None) -> torch.Tensor:
            if name not in where or name not in shapes:
                raise CheckpointError(f"{self.tag_dir}: parameter {name} is missing from the optimizer partitions")
            pieces = []
            for saved, g, start, numel in where[name]:
                flat = saved["fp32"][g] if key is None else saved["state"][g].get(key)
                if flat is None:
                    raise CheckpointError(f"{self.tag_dir}: the optimizer state holds no {key!r} for {name}")
                pieces.append(flat.narrow(0, start, numel))
            return torch.cat(pieces).view(shapes[name])

        return _Store(read, shapes)

    # ------------------------------------------------------------------ ZeRO-3
    def _zero3(self, tp_rank: int) -> _Store:
        if self.dims.pp > 1:
            raise CheckpointError(f"{self.tag_dir}: a ZeRO-3 checkpoint with a pipeline is not one this project writes")
        model = load_file(self.tag_dir / f"zero_pp_rank_0_mp_rank_{tp_rank:02d}_model_states.pt")
        flats, states = [], []
        for dp_rank in range(self.dims.dp):
            optim = load_file(_optim_file(self.tag_dir, dp_rank, tp_rank))["optimizer_state_dict"]
            base = optim["optimizer_state_dict"]
            self._note_optimizer(base, list(base["state"].values()))
            flats.append(optim["fp32_flat_groups"])
            states.append([base["state"].get(g, {}) for g in range(len(optim["fp32_flat_groups"]))])
        dp = self.dims.dp
        where: dict[str, tuple[int, int, torch.Size]] = {}  # name -> (group, offset, shape)
        for g, group in enumerate(model["param_shapes"]):
            offset = 0
            for name, shape in group.items():
                where[name] = (g, offset, torch.Size(shape))
                offset += math.ceil(torch.Size(shape).numel() / dp)
            if offset != flats[0][g].numel():
                raise CheckpointError(
                    f"{self.tag_dir}: ZeRO-3 group {g} holds {flats[0][g].numel()} elements, not {offset}"
                )

        def read(name: str, key: str | None) -> torch.Tensor:
            g, offset, shape = where[name]
            part = math.ceil(shape.numel() / dp)
            pieces = [(flats[r][g] if key is None else states[r][g][key]).narrow(0, offset, part) for r in range(dp)]
            return torch.cat(pieces).narrow(0, 0, shape.numel()).view(shape)

        return _Store(read, {name: shape for name, (_, _, shape) in where.items()})

    # ------------------------------------------------------------------ the module's weights (fp32 below ZeRO-3)
    def _module(self, tp_rank: int) -> _Store:
        if self.dims.pp == 1:
            weights = load_file(self.tag_dir / ckpt_names.model_states_file(tp_rank))["module"]
        else:
            cfg, weights = self.record.model_config(), {}
            num_layers, tied_copies = cfg.num_layers, tied_names(cfg)
            for layer in range(ckpt_names.pipeline_layer_count(num_layers)):
                for key, tensor in load_file(self.tag_dir / ckpt_names.layer_states_file(layer, tp_rank)).items():
                    name = ckpt_names.adaptive_lm_name(layer, key, num_layers, tied_copies)
                    if name is not None:
                        weights[name] = tensor

        def read(name: str, key: str | None) -> torch.Tensor:
            if name not in weights:
                raise CheckpointError(f"{self.tag_dir}: parameter {name} is missing from the saved weights")
            return weights[name]

        return _Store(read, {name: tensor.shape for name, tensor in weights.items() if torch.is_tensor(tensor)})

    # ------------------------------------------------------------------ ZeRO-0, fp32
    def _stage_parameters(self, pp_rank: int) -> list[str]:
        """One-piece names of pipeline stage ``pp_rank``'s parameters in its engine's ``module.parameters()``
        order, which is how its optimizer numbers them: the stage built on the meta device, its parts in the
        order DeepSpeed registers them (:func:`~adaptive_lm_ds.training.pipeline.stage_parts`)."""
        if self.dims.pp == 1:
            return self.names  # the one-stage engine's module is AdaptiveLM itself
        from adaptive_lm_ds.training.pipeline import stage_parts

        cfg = self.record.model_config()
        with torch.device("meta"):
            stage = AdaptiveLM(cfg, parallel.ShapeOnlyGroup(self.dims.tp), stage=pp_rank, num_stages=self.dims.pp)
        children = stage_parts(stage, tied=cfg.ties_tables)
        return [name for child, module in children for name, _ in module.named_parameters(prefix=child)]

    def _plain(self, tp_rank: int) -> _Store:
        """Each stage's torch optimizer ``state_dict`` (in ``mp_rank_MM_model_states.pt``), its parameters by
        index in :meth:`_stage_parameters` order; a last stage's tied copies are skipped (their momentum is the
        owner's). Every state tensor must have its saved weight's shape: a wrong order cannot pass unseen."""
        tied_copies = tied_names(self.record.model_config())
        weight_shapes = self._store("module", tp_rank).shapes
        state: dict[str, dict] = {}
        for pp_rank in range(self.dims.pp):
            mp = pp_rank * self.dims.tp + tp_rank
            optim = load_file(self.tag_dir / ckpt_names.model_states_file(mp)).get("optimizer")
            if not optim or not optim["param_groups"]:
                continue
            names = self._stage_parameters(pp_rank)
            by_index = [i for g in optim["param_groups"] for i in g["params"]]
            if len(by_index) != len(names):
                raise CheckpointError(
                    f"{self.tag_dir}: the optimizer of model-parallel rank {mp} holds {len(by_index)} parameters, "
                    f"its pipeline stage {len(names)}; this checkpoint was not written by this model"
                )
            self._note_optimizer(optim, list(optim["state"].values()))
            for name, index in zip(names, by_index):
                if self.dims.pp > 1 and name in tied_copies:
                    continue  # the last stage's copy of a tied tensor
                state[name] = optim["state"].get(index, {})
                for key, tensor in state[name].items():
                    if torch.is_tensor(tensor) and tensor.dim() > 0 and tensor.shape != weight_shapes.get(name):
                        raise CheckpointError(
                            f"{self.tag_dir}: the optimizer's {key} of {name} (model-parallel rank {mp}) has shape "
                            f"{tuple(tensor.shape)}, its weight {tuple(weight_shapes.get(name, ()))}; the "
                            "optimizer state does not match the model, resume it in the layout that wrote it"
                        )

        def read(name: str, key: str | None) -> torch.Tensor:
            if key not in state.get(name, {}):
                raise CheckpointError(f"{self.tag_dir}: the optimizer state holds no {key!r} for {name}")
            return state[name][key]

        return _Store(read, {name: weight_shapes[name] for name in state})


def _assemble(saved: _SavedRanks, shapes: dict[str, torch.Size], key: str | None) -> LazyTensors:
    """The one-piece fp32 tensors of ``key`` (None: the weights), each joined from the saved TP ranks' shards when
    asked for; a slice along the sharded dimension reads only the saved ranks holding those rows."""
    tp = saved.dims.tp

    def split(name: str, prefer: int = 0) -> tuple[int | None, int]:
        """(the dimension the saved shards split, each shard's size there): where a shard's shape differs from
        the one-piece shape (a band smaller than TP keeps its only real rows on rank 0: no split needed)."""
        shard_shape = saved.local_shape(saved.loaded_rank(key, prefer), name, key)
        dims = [d for d, (a, b) in enumerate(zip(shard_shape, shapes[name])) if a != b]
        return (dims[0], shard_shape[dims[0]]) if dims and tp > 1 else (None, 0)

    def finish(name: str, tensor: torch.Tensor, want: tuple[int, ...]) -> torch.Tensor:
        if tuple(tensor.shape) != want:
            got = tuple(tensor.shape)
            raise CheckpointError(f"{saved.tag_dir}: {name} has shape {got}, expected {want}")
        return tensor.float().contiguous()

    def read(name: str) -> torch.Tensor:
        dim, _ = split(name)
        if dim is None:
            return finish(name, saved.local(saved.loaded_rank(key, 0))(name, key), tuple(shapes[name]))
        joined = torch.cat([saved.local(r)(name, key) for r in range(tp)], dim=dim)
        return finish(name, joined.narrow(dim, 0, shapes[name][dim]), tuple(shapes[name]))

    def read_slice(name: str, dim: int, start: int, length: int) -> torch.Tensor:
        holder = min(tp - 1, start // -(-shapes[name][dim] // tp))  # the saved rank holding row ``start``
        saved_dim, size = split(name, holder)
        want = tuple(length if d == dim else n for d, n in enumerate(shapes[name]))
        if saved_dim != dim:
            return read(name).narrow(dim, start, length)
        if length == 0:
            return torch.zeros(want)
        pieces = []
        for r in range(start // size, -(-(start + length) // size)):
            lo, hi = max(start, r * size), min(start + length, (r + 1) * size)
            pieces.append(saved.local(r)(name, key).narrow(dim, lo - r * size, hi - lo))
        return finish(name, torch.cat(pieces, dim=dim), want)

    return LazyTensors(shapes, read, read_slice)


def data_position(record: CheckpointRecord) -> dict[str, int] | None:
    """The record's data position in samples of the epoch's order, and the samples each update took."""
    data = record.data
    if data is None or data.get("order") == "fairseq":  # fairseq's batch order: its own state, any DP size
        return data
    samples = int(data["position"]) * int(data["global_batch_size"])
    update_freq = int(((record.run_config or {}).get("data") or {}).get("update_freq", 1))
    return {
        "epoch": int(data["epoch"]), "samples": samples,
        "samples_per_update": int(data["global_batch_size"]) * update_freq,
        "seed": int(data["seed"]), "num_samples": int(data["num_samples"]), "shuffle": int(bool(data["shuffle"])),
    }  # fmt: skip


def read_weights(tag_dir: Path, record: CheckpointRecord) -> LazyTensors:
    """The one-piece fp32 weights of an opened checkpoint (:func:`open_checkpoint`); no optimizer file is read
    unless it holds the only fp32 masters (ZeRO-3, bf16/fp16 runs)."""
    shapes = one_piece_shapes(record.model_config())
    return _assemble(_SavedRanks(tag_dir, record, list(shapes)).load(None), shapes, None)


def read_training_state(
    tag_dir: str | Path, with_optimizer: bool = True, reader_tp: tuple[int, int] = (0, 1)
) -> TrainingState:
    """The :class:`TrainingState` of a training checkpoint (a tag folder or a save dir) of any layout.

    ``with_optimizer=False``: no optimizer file is read; optimizer and schedule start anew, the data position
    stays. ``reader_tp``: (TP rank, TP size) of the rank that will read the state: the param groups come from
    the saved TP rank whose rows it holds first, so it loads no saved rank's files it does not need.
    """
    tag_dir, record = open_checkpoint(tag_dir)
    shapes = one_piece_shapes(record.model_config())
    saved = _SavedRanks(tag_dir, record, list(shapes))  # each rank loads the saved ranks it reads from
    with_optimizer = with_optimizer and not record.optimizer_fresh
    if with_optimizer:
        first = min(saved.dims.tp - 1, reader_tp[0] * saved.dims.tp // reader_tp[1])
        saved.load("state", range(first, first + 1))  # the param groups, the state keys, Adam's step
    optimizer = "adam" if "exp_avg" in saved.state_keys else "nag"
    fresh = not with_optimizer or not saved.state_keys
    moments = {} if fresh else {key: _assemble(saved, shapes, key) for key in STATE_KEYS[optimizer]}
    lr_olds = {g.get("lr_old") for g in saved.groups} - {None}
    return TrainingState(
        weights=_assemble(saved, shapes, None),
        optimizer=optimizer,
        moments=moments,
        num_updates=0 if fresh else int(record.num_updates),
        adam_step=saved.adam_step if optimizer == "adam" and not fresh else None,
        lr_old=float(next(iter(lr_olds))) if len(lr_olds) == 1 and not fresh else None,
        data=None if record.optimizer_fresh else data_position(record),  # --reset-optimizer keeps it, as fairseq
        extra={"layout": record.dims, "zero_stage": record.zero_stage, "precision": record.precision},
    )
