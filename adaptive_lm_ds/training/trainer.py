"""The training run: set-up, the update loop, validation, checkpoints, resume.

Everything a run needs is decided before the first step, so bad input fails fast with one line:
the layout against the world size, the model against TP, the batch against the DeepSpeed JSON, the
data-bin against the dictionary, a resume checkpoint against the model config.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from adaptive_lm_ds import checkpoint as ckpt
from adaptive_lm_ds import host_memory, parallel
from adaptive_lm_ds.checkpoint import CheckpointRecord, SaveDirLock, save_checkpoint
from adaptive_lm_ds.config import ConfigError, ModelConfig
from adaptive_lm_ds.data import DataError, Dictionary, LMBatchIterator, build_batch_iterator, build_lm_dataset
from adaptive_lm_ds.errors import UserError, raised_on_every_rank
from adaptive_lm_ds.flops import peak_flops, training_flops_per_token
from adaptive_lm_ds.formats.consolidated import load_consolidated
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.interop import load_fairseq_checkpoint
from adaptive_lm_ds.interop.fairseq_training_state import fairseq_restore_file
from adaptive_lm_ds.layers.adaptive_softmax import set_criterion
from adaptive_lm_ds.metrics_log import TrainLogger, base2_loss
from adaptive_lm_ds.optim.lr_schedules import should_stop_for_min_lr
from adaptive_lm_ds.training import preflight
from adaptive_lm_ds.training.config import TrainConfig, model_config
from adaptive_lm_ds.training.ds_config import build_plan
from adaptive_lm_ds.training.engine import StepResult, build_module, read_step_results
from adaptive_lm_ds.training.engine_build import build_engine
from adaptive_lm_ds.training.resume import ResumeFromCheckpoint
from adaptive_lm_ds.training.signals import StopRequests
from adaptive_lm_ds.training.updates import PendingUpdate, UpdateRecord, memory_gb

LOG = logging.getLogger("adaptive_lm_ds.train")


class TrainingAborted(UserError, RuntimeError):
    """Training stopped on purpose (too many non-finite losses); the last good checkpoint is intact. Every rank
    stops at the same update (the skip follows the all-reduced gradient norm), so rank 0 alone prints it."""

    same_on_every_rank = True


def model_config_for(cfg: TrainConfig, vocab_size: int) -> tuple[ModelConfig, dict | None]:
    """The model config (preset, or the consolidated model's own) and its initial weights if any.

    A fairseq checkpoint to take over (``--restore-file X.pt``) fixes the model as ``--init-from`` does,
    unless the command line builds the model itself (fairseq's ``--arch`` and shape flags, checked
    against the checkpoint when it is loaded); its weights come with its training state."""
    fairseq_file = fairseq_restore_file(cfg.run.restore_file, cfg.run.save_dir)
    takeover = fairseq_file is not None and not (cfg.model.shape_flags() or cfg.run.arch)
    if not cfg.run.init_from and not takeover:
        return model_config(cfg, vocab_size), None
    source = f"--init-from {cfg.run.init_from}" if cfg.run.init_from else f"--restore-file {cfg.run.restore_file}"
    if cfg.model.shape_flags() or cfg.run.arch:
        raise ckpt.CheckpointError(
            f"{source} fixes the model's shape: drop --arch and the fairseq shape flags "
            f"{sorted(cfg.model.shape_flags())}"
        )
    if cfg.run.init_from:
        model_cfg, state, _ = load_consolidated(cfg.run.init_from)
    else:
        (model_cfg, _), state = load_fairseq_checkpoint(fairseq_file), None
    model_cfg = model_cfg.replace(**cfg.model.regularisation())
    if model_cfg.vocab_size != vocab_size:
        raise ckpt.CheckpointError(
            f"{source} has vocab_size {model_cfg.vocab_size} but {cfg.data.data}/dict.txt "
            f"gives {vocab_size}; preprocess with the model's dictionary (--srcdict)"
        )
    return model_cfg, state


def fairseq_takeover_order(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``--batch-order fairseq`` when ``--restore-file`` names a fairseq checkpoint: a fairseq run
    goes on with the batches fairseq would have used next."""
    if fairseq_restore_file(cfg.run.restore_file, cfg.run.save_dir) is None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_order="fairseq"))


def check_block_fits(tokens_per_sample: int, model_cfg: ModelConfig) -> None:
    """A training block longer than the model's positions would run past its position table (or, with
    sinusoidal positions, train at lengths the model declares it never sees)."""
    if tokens_per_sample > model_cfg.max_positions:
        raise ConfigError(
            f"--tokens-per-sample {tokens_per_sample} exceeds the model's {model_cfg.max_positions} positions; "
            f"use --tokens-per-sample {model_cfg.max_positions} or less"
        )


def _endless(iterator: LMBatchIterator):
    while True:
        yield from iterator


class Trainer(ResumeFromCheckpoint):
    """One training run on this rank (call :meth:`run`)."""

    def __init__(self, cfg: TrainConfig):
        host_memory.start_up_phase()  # tensors freed while the model is built go back to the OS
        self.cfg = cfg = fairseq_takeover_order(cfg)
        run, data = cfg.run, cfg.data
        world = dist.get_world_size()
        layout = parallel.ParallelDims.for_world(
            world, run.tensor_model_parallel_size, run.pipeline_model_parallel_size
        )
        self.plan = build_plan(cfg, layout.dp, layout.pp)
        preflight.check_precision(self.plan.precision)
        self.micro = self.plan.micro_batch  # sequences, decided once in build_ds_config
        self.dictionary = Dictionary.load(Path(data.data) / "dict.txt")
        self.model_cfg, init_state = model_config_for(cfg, len(self.dictionary))
        self.model_cfg.validate(layout.tp)
        check_block_fits(data.tokens_per_sample, self.model_cfg)
        self.train_data = build_lm_dataset(data.data, data.train_subset, data.tokens_per_sample, data.sample_break_mode)
        self.valid_data = build_lm_dataset(data.data, data.valid_subset, data.tokens_per_sample, data.sample_break_mode)
        self.dims = parallel.initialize_parallel(layout, run.seed)
        self.rank = dist.get_rank()
        dp_rank, dp_size = self.dims.dp_rank, self.dims.dp
        self.batches = build_batch_iterator(data, self.train_data, self.micro, dp_rank, dp_size, run.seed)
        self.valid_batches = LMBatchIterator(
            self.valid_data, self.micro, dp_rank, dp_size, shuffle=False, drop_last=False
        )
        if len(self.batches) == 0:
            raise DataError(
                f"the {data.train_subset} split has {len(self.train_data)} samples, fewer than one global batch "
                f"({self.batches.global_batch_size}); lower --max-tokens/--batch-size or use more data"
            )
        module = build_module(self.model_cfg, run.checkpoint_activations, run.seed, run.compile)
        set_criterion(module, cfg.optim.criterion)
        if init_state is not None:
            load_weights(module, init_state)
        built = build_engine(module, cfg.optim, self.plan, packed=data.sample_break_mode == "packed",
                             max_update=run.max_update)  # fmt: skip
        self.engine, self.stepper, self.scheduler = built.engine, built.stepper, built.scheduler
        self.num_updates = 0
        self.last_saved: str | None = None  # the newest checkpoint this run saved or resumed from
        self.stop_requests = StopRequests(verbose=False)  # replaced by the installed one in run()
        self.stopped_by = None  # the signal all ranks agreed to stop on
        self.lock: SaveDirLock | None = None  # rank 0's hold on --save-dir (run())
        self.consecutive_bad = 0
        self.skipped_overflow = 0  # fp16 steps DeepSpeed skipped to lower the loss scale
        self.logger: TrainLogger | None = None
        # called for each applied update, after the logger, when the pending updates are read (UpdateRecord)
        self.on_update: list[Callable[[UpdateRecord], None]] = []
        self.pending: list[PendingUpdate] = []  # applied updates not yet read back from the device
        self.flops_per_token = training_flops_per_token(self.model_cfg, self.dictionary, self.train_data)
        self.peak_flops = peak_flops(run.peak_tflops)
        host_memory.steady_phase()  # start-up's garbage returned; the steps reuse the heap

    # ------------------------------------------------------------------ checkpoints
    def _record(self) -> CheckpointRecord:
        return CheckpointRecord.build(
            self.model_cfg, self.dims, num_updates=self.num_updates, data=self.batches.state_dict(),
            precision=self.plan.precision, zero_stage=self.plan.zero_stage,
            run_config=dataclasses.asdict(self.cfg),
        )  # fmt: skip

    def save(self) -> str:
        run = self.cfg.run
        still_owner = self.lock.check_owned if self.lock is not None else None
        tag = save_checkpoint(self.engine, run.save_dir, self._record(), dictionary=self.dictionary,
                              keep_last_n=run.keep_last_n, still_owner=still_owner)  # fmt: skip
        self.last_saved = tag
        return tag

    # ------------------------------------------------------------------ loop
    def train_update(self, stream) -> bool:
        """One update attempt from the next ``update-freq`` micro batches; False when the step was skipped.

        An applied update reads nothing back: its numbers join :attr:`pending`, read at the log interval."""
        t0 = time.perf_counter()
        result = self.stepper.train_step([next(stream) for _ in range(self.cfg.data.update_freq)])
        step_time = time.perf_counter() - t0
        if not result.applied:
            self.deliver_updates()  # the updates before it are reported first
            self._skipped_step(result)
            return False
        self.num_updates += 1
        self.pending.append(PendingUpdate(self.num_updates, result, step_time, self.scheduler.get_last_lr()[0],
                                          self.batches.epoch + 1, memory_gb()))  # fmt: skip
        if self.num_updates % self.cfg.run.log_interval == 0:
            self.deliver_updates()
        return True

    def deliver_updates(self) -> None:
        """Read the pending updates back in one transfer and hand their records, in order, to the logger and
        every :attr:`on_update` subscriber."""
        pending, self.pending = self.pending, []
        for update, (loss_sum, ntokens, gnorm) in zip(pending, read_step_results([p.result for p in pending])):
            if math.isfinite(loss_sum):
                self.consecutive_bad = 0
            else:  # applied with finite gradients yet a non-finite loss: counted as bad all the same
                self._count_bad(update.update, loss_sum)
            record = self._update_record(update, loss_sum, ntokens, gnorm)
            for subscriber in (self._log_update, *self.on_update):
                subscriber(record)

    def _update_record(self, update: PendingUpdate, loss_sum: float, ntokens: int, gnorm: float) -> UpdateRecord:
        per_rank_flops = ntokens * self.flops_per_token / update.step_time / dist.get_world_size()
        extra = {
            "bsz": self.plan.train_batch,
            "step_time": update.step_time, "memory_gb": update.memory_gb, "tflops_per_rank": per_rank_flops / 1e12,
            "loss_scale": update.result.loss_scale,
        }  # fmt: skip
        if self.peak_flops:
            extra["mfu"] = per_rank_flops / self.peak_flops
        if self.cfg.optim.clip_norm > 0:  # fairseq's "clip": % of the interval's updates that were clipped
            extra["clip"] = 100.0 * (gnorm > self.cfg.optim.clip_norm)
        return UpdateRecord(update=update.update, loss_sum=loss_sum, ntokens=ntokens, gnorm=gnorm, lr=update.lr,
                            epoch=update.epoch, extra=extra)  # fmt: skip

    def _log_update(self, r: UpdateRecord) -> None:
        self.logger.update(r.update, r.loss_sum, r.ntokens, lr=r.lr, gnorm=r.gnorm, epoch=r.epoch, **r.extra)

    def validate(self) -> float:
        """Loss (base 2) over the validation split (or its first --max-valid-steps batches), logged."""
        self.valid_batches.set_epoch(0)
        limit = self.cfg.run.max_valid_steps or len(self.valid_batches)
        loss_sum, ntokens = self.stepper.eval_loss(itertools.islice(iter(self.valid_batches), limit))
        if self.logger is not None:
            self.logger.log_valid(self.num_updates, loss_sum, ntokens, epoch=self.batches.epoch + 1)
        return base2_loss(loss_sum, ntokens)

    def _should_stop(self, started: float) -> bool:
        run = self.cfg.run
        if self.num_updates >= run.max_update:
            return True
        if self.stepper.any_rank(self.stop_requests.received is not None):  # one rank's signal stops them all
            self.stopped_by = self.stop_requests.received or "a signal on another rank"
            return True
        if run.stop_time_hours > 0:  # each rank has its own clock: stop when any rank's time is up
            if self.stepper.any_rank(time.monotonic() - started >= run.stop_time_hours * 3600):
                return True
        return should_stop_for_min_lr(self.scheduler.get_last_lr()[0], self.cfg.optim.stop_min_lr) and (
            self.num_updates > self.cfg.optim.warmup_updates
        )

    def _skipped_step(self, result: StepResult) -> None:
        """A step the engine did not apply: an fp16 overflow (DeepSpeed lowered the loss scale) or non-finite
        gradients (counted; too many in a row abort the run)."""
        if self.engine.fp16_enabled():
            self.skipped_overflow += 1
            if self.rank == 0:
                LOG.warning(f"gradient overflow at update {self.num_updates + 1}: step skipped, "
                            f"loss scale now {result.loss_scale:g}")  # fmt: skip
            return
        (loss_sum, _, _) = read_step_results([result])[0]  # a skipped update's loss, for the warning only
        self._count_bad(self.num_updates + 1, loss_sum, skipped=True)

    def _count_bad(self, update: int, loss_sum: float, skipped: bool = False) -> None:
        self.consecutive_bad += 1
        if self.rank == 0:
            what = "skipped update" if skipped else "applied update"
            LOG.warning(f"{what} {update}: non-finite loss or gradients "
                        f"(loss {loss_sum}, {self.consecutive_bad} in a row)")  # fmt: skip
        if self.consecutive_bad >= self.cfg.run.max_consecutive_nan:
            raise TrainingAborted(
                f"{self.consecutive_bad} updates in a row had non-finite loss/gradients; stopped. "
                f"The last good checkpoint in {self.cfg.run.save_dir} is intact: lower --lr, raise --warmup-updates "
                "or switch fp16 to bf16, then rerun to resume"
            )

    def _startup_checks(self) -> SaveDirLock | None:
        """Folders, free space and the save-dir lock, decided on rank 0 and agreed by every rank."""
        run = self.cfg.run
        error, lock = None, None
        if self.rank == 0:
            try:
                if run.tensorboard_logdir:
                    preflight.check_writable(run.tensorboard_logdir, "--tensorboard-logdir")
                if not run.no_save:
                    preflight.check_writable(run.save_dir, "--save-dir")
                    optimizer = self.cfg.optim.optimizer
                    needed = preflight.checkpoint_bytes(self.model_cfg, self.plan.precision, optimizer,
                                                        self.plan.zero_stage)  # fmt: skip
                    preflight.check_free_space(run.save_dir, needed)
                    lock = SaveDirLock(run.save_dir).acquire()
                    if lock.took_over is not None:
                        ckpt.folders.warn(
                            f"took over {lock.path} from a run that is gone ({lock.took_over.describe()}; "
                            f"{lock.took_over_because})"
                        )
            except UserError as e:  # any user error on rank 0 must reach every rank, or they wait forever
                error = e
        if self.stepper.any_rank(error is not None):
            if error is not None:
                raise error
            raise raised_on_every_rank(preflight.StartupError("a start-up check failed on rank 0"))
        return lock

    def run(self) -> dict:
        lock = self.lock = self._startup_checks()
        try:
            with StopRequests(verbose=self.rank == 0, saves=not self.cfg.run.no_save) as self.stop_requests:
                return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> dict:
        run = self.cfg.run
        resumed = self.try_resume()
        if not run.no_save:
            ckpt.set_aside_newer(run.save_dir, self.num_updates)
        self.logger = TrainLogger(
            log_interval=run.log_interval, log_format=run.log_format, max_update=run.max_update,
            tensorboard_logdir=run.tensorboard_logdir or None, rank=self.rank, start_update=self.num_updates,
            time_limit=run.stop_time_hours * 3600,
        )  # fmt: skip
        if self.rank == 0:
            for line in self.describe(resumed).splitlines():
                LOG.info(line)
        stream = _endless(self.batches)
        started = time.monotonic()
        last_saved = self.num_updates if resumed else None
        valid_loss = None
        while not self._should_stop(started):
            if not self.train_update(stream):
                continue
            if run.validate_interval_updates and self.num_updates % run.validate_interval_updates == 0:
                self.deliver_updates()
                valid_loss = self.validate()
            if not run.no_save and run.save_interval_updates and self.num_updates % run.save_interval_updates == 0:
                self.deliver_updates()  # a run that must abort does so before it saves
                self.save()
                last_saved = self.num_updates
        self.deliver_updates()
        self.logger.flush(self.num_updates, epoch=self.batches.epoch + 1)
        if self.stopped_by is not None:  # preempted: save now, skip the final validation
            return self._stop_for_signal(last_saved)
        if valid_loss is None or (run.validate_interval_updates and self.num_updates % run.validate_interval_updates):
            valid_loss = self.validate()
        if not run.no_save and last_saved != self.num_updates:
            self.save()
        self.logger.close()
        return {"num_updates": self.num_updates, "valid_loss_base2": valid_loss, "valid_ppl": 2.0**valid_loss}

    def _stop_for_signal(self, last_saved: int | None) -> dict:
        run = self.cfg.run
        urgent = self.stepper.any_rank(self.stop_requests.urgent)  # a second signal on any rank: no rank saves
        if not run.no_save and not urgent and last_saved != self.num_updates:
            self.save()
        self.logger.close()
        name = getattr(self.stopped_by, "name", str(self.stopped_by))
        saved = f"checkpoint {Path(run.save_dir) / str(self.last_saved)}"
        if run.no_save or urgent:
            saved = "nothing saved (--no-save)" if run.no_save else f"nothing saved (signalled again); last {saved}"
        return {
            "num_updates": self.num_updates, "valid_loss_base2": None, "valid_ppl": None,
            "stopped_by": name, "exit_code": 128 + getattr(self.stopped_by, "value", 15),
            "message": f"stopped by {name} after update {self.num_updates}; {saved}; rerun the command to resume",
        }  # fmt: skip

    def describe(self, resumed: str | None) -> str:
        n_local = sum(p.numel() for p in self.engine.module.parameters())
        return (
            f"model {self.cfg.run.init_from or self.cfg.run.arch or self.cfg.run.preset}: "
            f"{self.model_cfg.num_layers} layers, d {self.model_cfg.embed_dim}, vocab {self.model_cfg.vocab_size}; "
            f"{n_local:,} parameters on rank 0\n"
            f"layout {self.dims.describe()}; micro batch {self.micro} x "
            f"{self.cfg.data.tokens_per_sample} tokens, update-freq {self.cfg.data.update_freq}; "
            f"{self.plan.precision}; criterion {self.cfg.optim.criterion}; ZeRO stage {self.plan.zero_stage}\n"
            f"train: {len(self.train_data):,} samples, {len(self.batches) // self.cfg.data.update_freq:,} updates "
            f"per epoch ({len(self.batches):,} micro batches per rank / update-freq {self.cfg.data.update_freq}); "
            f"valid: {len(self.valid_data):,} samples\n" + self._start_point(resumed)
        )

    def _start_point(self, resumed) -> str:
        if resumed:
            return f"resumed from {resumed} at update {self.num_updates}"
        if self.cfg.run.init_from:
            return f"starting at update 0 from the weights of --init-from {self.cfg.run.init_from}"
        return f"starting from scratch (seed {self.cfg.run.seed})"
