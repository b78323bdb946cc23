"""Resume a run from a training checkpoint of any layout (the :class:`~adaptive_lm_ds.training.trainer.Trainer`'s
resume half).

The layout, ZeRO stage and precision that wrote the checkpoint resume through DeepSpeed's own load (RNG
included, bit-exact); any other through the layout-free :class:`TrainingState` of the state adapter
(:mod:`adaptive_lm_ds.formats.state_adapter`, docs/checkpoints-across-layouts.md), said in one line at start-up.
Another program's training state (a fairseq checkpoint) plugs into :meth:`ResumeFromCheckpoint._resume_from_state`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from adaptive_lm_ds import checkpoint as ckpt
from adaptive_lm_ds import parallel
from adaptive_lm_ds.checkpoint import CheckpointRecord
from adaptive_lm_ds.config import DROPOUT_FIELDS, ModelConfig
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.formats.state_adapter import TrainingState, load_training_state, read_training_state
from adaptive_lm_ds.formats.state_reader import data_position
from adaptive_lm_ds.interop.fairseq_training_state import (
    FAIRSEQ_ITERATOR,
    FAIRSEQ_WORLD_SIZE,
    fairseq_restore_file,
    read_fairseq_training_state,
)

LOG = logging.getLogger("adaptive_lm_ds.train")


class ResumeFromCheckpoint:
    """The trainer's resume: needs its ``cfg``, ``model_cfg``, ``dims``, ``plan``, ``engine``, ``scheduler``,
    ``batches`` and ``rank``; sets ``num_updates`` and ``last_saved``."""

    def try_resume(self) -> str | None:
        """Resume from ``--restore-file`` / ``--save-dir``'s newest checkpoint, in any layout.

        The layout, ZeRO stage and precision that wrote it: DeepSpeed's own load (RNG included, bit-exact).
        Any other: the layout-free :class:`TrainingState` (:mod:`adaptive_lm_ds.formats.state_adapter`),
        through :meth:`_resume_from_state`.
        """
        run = self.cfg.run
        fairseq_file = fairseq_restore_file(run.restore_file, run.save_dir)  # unless this run has saved since
        found = ckpt.resume_point(run.save_dir, "checkpoint_last" if fairseq_file else run.restore_file)
        if found is None:
            return self._take_over_fairseq(str(fairseq_file)) if fairseq_file else None
        load_dir, tag, record = found
        self._check_saved_model(load_dir / tag, record.model_config())
        saved = _describe_layout(record.dims, record.zero_stage, record.precision)
        now = _describe_layout(self.dims, self.plan.zero_stage, self.plan.precision)
        if saved == now:
            self._resume_natively(load_dir, tag, record)
        else:
            state = read_state(load_dir / tag, saved, not run.reset_optimizer, (self.dims.tp_rank, self.dims.tp))
            self._resume_from_state(state, f"{tag} saved at {saved} in {now}")
        self.last_saved = tag
        return tag

    def _check_saved_model(self, tag_dir: Path | str, saved_model: ModelConfig) -> None:
        saved_model = saved_model.replace(**{name: getattr(self.model_cfg, name) for name in DROPOUT_FIELDS})
        if saved_model != self.model_cfg:
            diff = {k: (getattr(saved_model, k), getattr(self.model_cfg, k))
                    for k in dataclasses.asdict(saved_model)
                    if getattr(saved_model, k) != getattr(self.model_cfg, k)}  # fmt: skip
            raise ckpt.CheckpointError(
                f"checkpoint {tag_dir} was trained with another model config (saved, now): {diff}; "
                "use the same --preset/--init-from or a fresh --save-dir"
            )

    def _take_over_fairseq(self, path: str) -> str:
        """Continue the fairseq run whose checkpoint is ``path``: its weights, optimizer state and update count,
        and, in fairseq's batch order, the batch fairseq would have used next."""
        try:
            saved_model, state = read_fairseq_training_state(path)
        except UserError as e:
            raise ckpt.CheckpointError(f"cannot take over fairseq checkpoint {path}: {e}") from None
        self._check_saved_model(path, saved_model)
        if self.cfg.run.reset_optimizer:
            state = dataclasses.replace(state, moments={}, num_updates=0, lr_old=None)
        self._resume_from_state(state, f"fairseq checkpoint {path}")
        if not self.cfg.run.reset_dataloader:
            self.batches.load_fairseq_state(state.extra[FAIRSEQ_ITERATOR], state.extra[FAIRSEQ_WORLD_SIZE])
        return path

    def _resume_natively(self, load_dir: Path, tag: str, record: CheckpointRecord) -> None:
        """DeepSpeed's own load of a checkpoint this very layout wrote."""
        run = self.cfg.run
        # A converted model's checkpoint (layout_checkpoint.py) carries no optimizer history: start it anew.
        reset_optimizer = run.reset_optimizer or record.optimizer_fresh
        try:
            path, _ = self.engine.load_checkpoint(
                str(load_dir), tag=tag,
                load_optimizer_states=not reset_optimizer, load_lr_scheduler_states=not reset_optimizer,
            )  # fmt: skip
        except ckpt.CheckpointError as e:  # our safe engine: unsafe or unreadable file, already one line
            raise ckpt.CheckpointError(f"cannot load checkpoint {load_dir / tag}: {e}") from None
        except Exception as e:  # noqa: BLE001 - DeepSpeed raises many types on a broken checkpoint
            first = (str(e).splitlines() or [""])[0]
            raise ckpt.CheckpointError(
                f"cannot load checkpoint {load_dir / tag}: {type(e).__name__}: {first}"
            ) from None
        if path is None:
            raise ckpt.CheckpointError(f"DeepSpeed found no checkpoint files in {load_dir / tag}; it is corrupt")
        self.num_updates = 0 if reset_optimizer else int(record.num_updates)
        if not reset_optimizer:
            self.scheduler.num_updates = self.num_updates
        if not run.reset_dataloader and record.data is not None:
            self._seek_data(data_position(record))
            ckpt.load_rng(load_dir, tag, self.rank)

    def _resume_from_state(self, state: TrainingState, description: str) -> None:
        """Continue from a layout-free training state (any layout's checkpoint, or another program's), said in
        one line: ``description`` names the source ("checkpoint_N saved at ... in ...")."""
        try:
            load_training_state(self.engine, state)
        except ckpt.CheckpointError as e:
            raise ckpt.CheckpointError(f"cannot resume {description}: {e}") from None
        self.num_updates = int(state.num_updates)
        self.scheduler.load_state_dict({"num_updates": self.num_updates})
        carried = ["weights"]
        if state.moments:
            carried.append("NAG momentum" if state.optimizer == "nag" else "Adam moments and step")
        if state.num_updates:
            carried.append("schedule")
        if state.data is not None and not self.cfg.run.reset_dataloader:
            self._seek_data(state.data)
            carried.append("data position")
        if self.rank == 0:
            what = f"{', '.join(carried[:-1])} and {carried[-1]}" if len(carried) > 1 else carried[0]
            LOG.info(f"resuming {description}: {what} carried over; RNG not (layout changed)")

    def _seek_data(self, position: dict) -> None:
        """Continue the data after the state's samples; a changed update size is warned about in one line."""
        if position.get("order") == "fairseq":  # fairseq's batch order re-divides its batches over any DP size
            return self.batches.load_state_dict(position)
        per_update = self.batches.global_batch_size * self.cfg.data.update_freq
        saved = int(position.get("samples_per_update", per_update))
        if saved != per_update and self.rank == 0:
            LOG.warning(
                f"the checkpoint took {saved} sequences per update, this run takes {per_update} "
                f"(micro batch x DP x --update-freq): momentum is kept but the batch changes; continuing at sample "
                f"{int(position['samples']) // per_update * per_update} of epoch {int(position['epoch']) + 1}"
            )
        self.batches.seek(position, update_samples=per_update)


def _describe_layout(dims: parallel.ParallelDims, zero_stage: int, precision: str) -> str:
    return f"{dims.describe()} ZeRO-{zero_stage} {precision}"


def read_state(
    tag_dir: Path, saved: str, with_optimizer: bool = True, reader_tp: tuple[int, int] = (0, 1)
) -> TrainingState:
    """:func:`read_training_state`; a checkpoint whose files this version cannot decode is refused in one line."""
    try:
        return read_training_state(tag_dir, with_optimizer, reader_tp)
    except ckpt.CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise ckpt.CheckpointError(
            f"cannot resume {tag_dir} in another layout: its files are in a format this version cannot read "
            f"({type(e).__name__}: {e}); resume it at {saved}, the layout that wrote it"
        ) from None
