"""The one training loop, shared by every objective (``sslvit.objectives.base.Objective``: its
``forward`` and hooks are the whole seam).

The loop owns devices, processes, precision and gradient accumulation (accelerate), the AdamW
optimizer, the per-iteration schedules, logging, checkpoints (at epoch ends, and at the step a
SIGTERM or SIGINT stops the run: see ``stop_signals``) and export.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from sslvit.config import save_yaml, to_dict
from sslvit.data.folder import DataError
from sslvit.data.loaders import training_loader
from sslvit.data.stream_loader import StreamLoader, bad_sample_report
from sslvit.objectives.base import Objective, StepInfo
from sslvit.train.checkpoint import (check_writable, latest_checkpoint, read_meta, resumable_checkpoint,
                                     save_checkpoint, verify_loadable)
from sslvit.train.compiled import compile_objective
from sslvit.runtime.devices import build_accelerator, process_state
from sslvit.train.optim import build_adamw, clip_grad_per_param_, init_adamw_state
from sslvit.train.parameters import format_counts, parameter_counts
from sslvit.train.precision import PrecisionChoice, measure_step, resolve_precision
from sslvit.train.run_outputs import (check_shard_counts, export, gathered, machine, online_knn, save_pictures,
                                      sharded, too_many_unreadable, write_report)
from sslvit.runtime.errors import CheckpointError, TrainingDiverged
from sslvit.runtime.schedules import cosine_schedule, scaled_lr
from sslvit.train.stop_signals import RunStopped, StopRequest
from sslvit.train.tracking import quiet_writer_thread, tracked_scalars, write_hparams
from sslvit.train.train_config import TrainConfig

__all__ = ["TrainConfig", "TrainingDiverged", "RunStopped", "pretrain"]


@dataclass
class Tally:
    """Sums over a stretch of micro-batches: the epoch, or the window between two log records."""
    loss: float = 0.0  # sum of the finite micro-batch losses
    batches: int = 0  # micro-batches with a finite loss
    images: int = 0  # images seen, all processes
    skipped: int = 0  # unreadable draws (this process)

    def add(self, loss: float, images: int, skipped: int) -> None:
        if math.isfinite(loss):
            self.loss += loss
            self.batches += 1
        self.images += images
        self.skipped += skipped


def session_start(p: "Progress", batches_per_epoch: int) -> float:
    """Where a session starts, in epochs (5.5: half of epoch 5 was trained before a mid-epoch resume)."""
    return p.epoch + p.batches_done / max(1, batches_per_epoch)


@dataclass
class Progress:
    """Where the run is, beyond accelerate's state: what a mid-epoch checkpoint must keep for
    ``--resume`` to continue exactly (the data order and the RNG come from the step itself)."""
    epoch: int = 0  # 0-based epoch being trained
    step: int = 0  # optimizer steps done
    batches_done: int = 0  # micro-batches of ``epoch`` done (this process)
    applied: int = 0  # optimizer steps applied (not skipped as non-finite)
    bad_streak: int = 0
    counts_checked: bool = False
    epoch_tally: Tally = field(default_factory=Tally)
    window: Tally = field(default_factory=Tally)

    @classmethod
    def from_meta(cls, meta: dict) -> "Progress":
        saved = meta.get("progress")
        if not saved:  # an epoch-end checkpoint: the next epoch starts from its first batch
            return cls(epoch=meta["epoch"] + 1, step=meta["step"], applied=meta["step"])
        tallies = {k: Tally(**saved.pop(k)) for k in ("epoch_tally", "window")}
        return cls(**saved, **tallies)


def choose_precision(tc: TrainConfig, objective, train_set, collate_fn, resume_from: Optional[Path]) -> PrecisionChoice:
    """``train.precision`` for this run: a resumed ``auto`` run keeps the checkpoint's precision;
    otherwise ``resolve_precision`` (which may time the run's own step), the main process's
    choice on every process."""
    saved = read_meta(resume_from).get("precision") if resume_from is not None else None
    if tc.precision == "auto" and saved:
        return PrecisionChoice(saved, "kept from the checkpoint being resumed")
    choice = resolve_precision(tc.precision, lambda: measure_step(objective, train_set, tc.batch_size, collate_fn))
    if process_state().num_processes > 1:
        choice = broadcast_object_list([choice])[0]
    return choice


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _clip_or_measure(accelerator, model, tc: TrainConfig) -> torch.Tensor:
    """Clip as configured; -> the total gradient norm (inf or nan when a gradient is not finite)."""
    if tc.clip_grad is not None and tc.clip_mode == "global":
        return accelerator.clip_grad_norm_(model.parameters(), tc.clip_grad)
    accelerator.unscale_gradients()
    if tc.clip_grad is not None:
        return clip_grad_per_param_(model.parameters(), tc.clip_grad)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def _check_fresh_run(cfg, train_set) -> Optional[Path]:
    """-> the checkpoint to resume from (None for a fresh run), after the checks a run needs
    before anything is built."""
    tc: TrainConfig = cfg.train
    tc.validate()
    run_dir = Path(cfg.out).expanduser()
    resume_from = resumable_checkpoint(run_dir) if cfg.resume else None
    if not cfg.resume and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"Run directory '{run_dir}' already holds checkpoints; pass --resume to continue "
                              "that run, or --out a new directory.")
    processes = process_state().num_processes
    if len(train_set) < tc.batch_size * processes:
        raise ValueError(f"The training data has {len(train_set)} images, fewer than one batch of "
                         f"{tc.batch_size} x {processes} processes; lower train.batch_size.")
    return resume_from


def _check_disk(accelerator, objective, tc: TrainConfig, run_dir: Path) -> None:
    problem = None
    if accelerator.is_main_process:
        # model + two AdamW moments per checkpoint; the newest ``keep`` plus the one being written
        state_bytes = sum(t.numel() * t.element_size() for t in objective.state_dict().values())
        try:
            check_writable(run_dir, 3 * state_bytes * (tc.keep_checkpoints + 1))
        except CheckpointError as e:
            problem = str(e)
    if accelerator.num_processes > 1:  # every process stops, not only the one that looked
        problem = broadcast_object_list([problem])[0]
    if problem:
        raise CheckpointError(problem)


class Trainer:
    """One pretraining run: ``run()`` trains from a fresh start or a checkpoint to the last epoch
    (or the step a signal stops it at). Each part is one method: set-up (``__init__``,
    ``_prepare``, ``_resume``), an epoch (``_train_epoch``), a micro-batch (``_micro_step``), an
    optimizer step's bookkeeping (``_count_step``), the epoch's end (``_end_epoch``)."""

    def __init__(self, cfg, objective, train_set, picture_imgs=None, collate_fn=None, knn_sets=None):
        self.cfg, self.tc = cfg, cfg.train
        self.train_set, self.picture_imgs = train_set, picture_imgs
        self.collate_fn, self.knn_sets = collate_fn, knn_sets
        self.run_dir = Path(cfg.out).expanduser()
        if not isinstance(objective, Objective):
            raise TypeError(f"{type(objective).__name__} is not an sslvit.objectives.base.Objective; subclass it "
                            "(its hooks default to doing nothing).")
        self.resume_from = _check_fresh_run(cfg, train_set)
        self.choice = choose_precision(self.tc, objective, train_set, collate_fn, self.resume_from)
        self.accelerator = build_accelerator(
            mixed_precision=self.choice.precision, gradient_accumulation_steps=self.tc.accum_steps,
            log_with="tensorboard", project_dir=str(self.run_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        self.main = self.accelerator.is_main_process
        _check_disk(self.accelerator, objective, self.tc, self.run_dir)
        if self.main:
            save_yaml(cfg, self.run_dir / "config.yaml")
        set_seed(self.tc.seed)
        self._prepare(objective)
        self.log_file, self.log_failures = None, set()

    def _prepare(self, objective) -> None:
        tc, acc = self.tc, self.accelerator
        self.effective_batch = tc.batch_size * acc.num_processes * tc.accum_steps
        self.base_lr = tc.lr if tc.lr is not None else scaled_lr(tc.blr, self.effective_batch)
        optimizer = build_adamw(objective, self.base_lr, tc.weight_decay, tc.betas)
        loader, by_accelerate = training_loader(self.train_set, tc.batch_size, acc.num_processes, tc.num_workers,
                                                tc.seed, self.collate_fn, device=acc.device)
        if by_accelerate:
            self.model, self.optimizer, self.loader = acc.prepare(objective, optimizer, loader)
        else:
            self.model, self.optimizer = acc.prepare(objective, optimizer)
            self.loader = loader
        self.raw = acc.unwrap_model(self.model)
        if sharded(acc):  # a sharded checkpoint resumes only with a state for every parameter
            init_adamw_state(self.optimizer)
        if tc.compile != "off":
            acc.print(compile_objective(self.raw, tc.compile))
        self.steps_per_epoch = len(self.loader) // tc.accum_steps
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.warmup_steps = int(tc.warmup_epochs * self.steps_per_epoch)
        self.wd_end = tc.weight_decay if tc.weight_decay_end is None else tc.weight_decay_end
        self.lr_end = self.base_lr if tc.lr_schedule == "constant" else tc.min_lr

    def _resume(self) -> Progress:
        if self.resume_from is None:
            if self.cfg.resume:
                self.accelerator.print(f"No complete checkpoint in '{self.run_dir}'; starting from scratch.")
            return Progress()
        verify_loadable(self.resume_from)
        self.accelerator.load_state(str(self.resume_from))
        progress = Progress.from_meta(read_meta(self.resume_from))
        self.accelerator.print(f"Resuming from {self.resume_from} (epoch {progress.epoch}, step {progress.step})."
                               + (f" It was taken inside epoch {progress.epoch + 1}: its first "
                                  f"{progress.batches_done} batches are skipped." if progress.batches_done else ""))
        return progress

    def log(self, record: dict) -> None:
        if self.main:
            try:
                self.log_file.write(json.dumps(record) + "\n")
                self.log_file.flush()
            except OSError as e:  # the main process alone: raising here left the others at the next barrier
                self._log_failed("log.jsonl", e)
        self._tracked(lambda: self.accelerator.log(tracked_scalars(record), step=self.p.step))

    def _tracked(self, write: Callable[[], None]) -> None:
        """A TensorBoard write, until one fails (its writer then raises that error on every write)."""
        if "tensorboard" not in self.log_failures:
            try:
                write()
            except OSError as e:
                self._log_failed("tensorboard", e)

    def _log_failed(self, name: str, e: OSError) -> None:
        if name not in self.log_failures:
            print(f"warning: '{self.run_dir / name}' could not be written ({e.strerror or e}); the run goes on, and a "
                  "checkpoint that cannot be written stops it.", file=sys.stderr)
        self.log_failures.add(name)

    def run(self, stop: Optional[StopRequest] = None) -> Path:
        stop = stop or StopRequest()
        self.p = self._resume()
        acc, tc = self.accelerator, self.tc
        acc.init_trackers("tensorboard")  # one entry per run: hparams below, not in a folder of their own
        quiet_writer_thread()
        if self.resume_from is None:  # a resumed run's entry has them already
            self._tracked(lambda: write_hparams(acc, _flat(to_dict(self.cfg))))
        self.log_file = open(self.run_dir / "log.jsonl", "a") if self.main else None
        if self.main:
            acc.print(f"Run directory: {self.run_dir}  |  {acc.num_processes} process(es)"
                      f"{', parameters sharded (FSDP2),' if sharded(acc) else ''} on {acc.device}, precision "
                      f"{self.choice.name} ({self.choice.reason}), effective batch {self.effective_batch}, "
                      f"lr {self.base_lr:.3g}, {self.steps_per_epoch} steps/epoch")
        counts = parameter_counts(self.raw)
        acc.print(format_counts(counts))
        c = self.choice
        self.log({"step": self.p.step, "parameters": counts, "precision": c.name, "precision_reason": c.reason,
                  "machine": machine(acc), "objective": type(self.raw).__name__,
                  **({"precision_timings_s": c.timings, "precision_choice_s": c.cost_s} if c.timings else {})})
        last_epoch = tc.epochs - 1 if tc.stop_after is None else min(tc.epochs, self.p.epoch + tc.stop_after) - 1
        self.start_epoch = session_start(self.p, len(self.loader))
        self.last_epoch, self.run_t0 = last_epoch, time.perf_counter()
        try:
            finished = self.p.epoch > last_epoch
            if finished:  # --resume of a finished run: its backbone, written again
                acc.print(f"The run's {tc.epochs} epoch{'s' * (tc.epochs != 1)} were trained already; the backbone "
                          f"is written again from {self.resume_from}.")
                export(acc, self.model, self.raw, self.cfg, self.run_dir)
            while self.p.epoch <= last_epoch:
                signum = stop.agreed(acc)
                if signum is None:
                    signum = self._train_epoch(stop)
                if signum is not None and self.p.batches_done < len(self.loader):
                    raise self._stopped(signum)
                self._end_epoch(self.p.epoch == last_epoch or signum is not None)
                if signum is not None:
                    raise self._stopped(signum)
                self.p = Progress(epoch=self.p.epoch + 1, step=self.p.step, applied=self.p.applied,
                                  bad_streak=self.p.bad_streak, counts_checked=self.p.counts_checked)
            elapsed = time.perf_counter() - self.run_t0
            if not finished:
                self.log({"step": self.p.step, "training_time_s": elapsed})
                acc.print(f"Training time {timedelta(seconds=round(elapsed))}")
        except BaseException as e:
            failed = e
            raise
        else:
            failed = None
        finally:
            self._close(failed)
        return self.run_dir

    def _close(self, failed: Optional[BaseException]) -> None:
        if self.log_file is not None:
            with contextlib.suppress(OSError):  # every record is flushed: only one log() warned of is left
                self.log_file.close()
        for tracker in self.accelerator.trackers:  # end_training without its destroy_process_group: a run's
            with contextlib.suppress(OSError):  # start is followed by the run in the same processes; main()
                tracker.finish()  # ends the group. An OSError here is the full disk log() warned of
        # a run that fails before its first checkpoint is removed (entry.removed_if_it_fails), a
        # diverged one kept: a report of the removed one would be named, then gone
        if failed is None or isinstance(failed, TrainingDiverged) or latest_checkpoint(self.run_dir):
            write_report(self.accelerator, self.run_dir)

    def _epoch_batches(self):
        """This epoch's batches, past the ones a mid-epoch checkpoint already trained."""
        epoch, skip = self.p.epoch, self.p.batches_done
        if hasattr(self.collate_fn, "set_position"):  # draws keyed by the batch's place in the epoch
            # a sampler skips batches before they are collated; a stream re-reads and collates them
            first = 0 if isinstance(self.loader, StreamLoader) else skip
            self.collate_fn.set_position(epoch, first, self.accelerator.process_index)
        self.loader.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        if not skip:
            return self.loader
        if isinstance(self.loader, StreamLoader):
            return self.loader.skipping(skip)
        # skips indices in the sampler: the skipped images are not even loaded
        batches = self.accelerator.skip_first_batches(self.loader, skip)
        batches.set_epoch(epoch)
        return batches

    def _train_epoch(self, stop: StopRequest) -> Optional[int]:
        """Train the rest of epoch ``self.p.epoch``; -> the signal that stopped it at a step, or None."""
        tc, p = self.tc, self.p
        if not p.batches_done:
            self.raw.on_epoch_start(p.epoch)
        self.model.train()
        self.window_t0 = self.epoch_t0 = time.perf_counter()
        self.epoch_batches0 = p.epoch_tally.batches  # a resumed epoch's speed counts only its own batches
        batches = self._epoch_batches()
        self.bar = tqdm(batches, desc=f"epoch {p.epoch + 1}/{tc.epochs}", disable=not self.main, leave=False,
                        dynamic_ncols=True, initial=p.batches_done, total=len(self.loader))
        micro = 0
        try:
            for imgs, labels, skipped in self.bar:
                loss_val, bad_step, out, info, lr, wd = self._micro_step(imgs, labels, micro)
                micro = (micro + 1) % tc.accum_steps
                p.batches_done += 1
                n_imgs = len(labels) * self.accelerator.num_processes
                p.epoch_tally.add(loss_val, n_imgs, int(skipped.sum()))
                p.window.add(loss_val, n_imgs, 0)
                if not self.accelerator.sync_gradients:
                    continue
                self._count_step(bad_step, out, info, lr, wd)
                signum = stop.agreed(self.accelerator)
                if signum is not None:
                    return signum
        finally:
            self.bar.close()
        return None

    def _micro_step(self, imgs, labels, micro: int):
        """Forward and backward of one micro-batch, and the optimizer step when it ends an
        accumulation. -> (loss, 'loss' | 'gradients' | None for a step not applied, outputs, the
        step's StepInfo, lr, wd)."""
        tc, acc, raw, p = self.tc, self.accelerator, self.raw, self.p
        # this micro-batch's rows in the step's global batch, in the order accelerate's sampler
        # deals batches: micro-batch-major, then process
        b = len(labels)
        start = (micro * acc.num_processes + acc.process_index) * b
        info = StepInfo(step=p.step, micro=micro, epoch=p.epoch, total_steps=self.total_steps,
                        steps_per_epoch=self.steps_per_epoch, key=tc.seed * 2**32 + p.step,
                        rows=slice(start, start + b), global_size=self.effective_batch)
        raw.before_micro_batch(info)
        lr = cosine_schedule(p.step, self.total_steps, self.base_lr, self.lr_end, self.warmup_steps)
        wd = cosine_schedule(p.step, self.total_steps, tc.weight_decay, self.wd_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0
        if micro == 0:
            self.window_finite = True
        bad_step = None
        with acc.accumulate(self.model):
            out = self.model(imgs)
            acc.backward(out["loss"])
            # one small all-reduce: every process sees the same value, so all skip (or stop) together
            loss_val = acc.reduce(out["loss"].detach().float(), reduction="mean").item()
            self.window_finite = self.window_finite and math.isfinite(loss_val)
            if acc.sync_gradients:
                grad_norm = _clip_or_measure(acc, self.model, tc)
                # with fp16 the grad scaler skips overflowing steps itself and lowers its scale
                grads_finite = acc.scaler is not None or bool(torch.isfinite(grad_norm))
                if not self.window_finite or not grads_finite:
                    bad_step = "loss" if not self.window_finite else "gradients"
                    self.optimizer.zero_grad(set_to_none=True)  # the step is not applied
                else:
                    raw.before_optimizer_step(info)
            if bad_step is None:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss_val, bad_step, out, info, lr, wd

    def _count_step(self, bad_step: Optional[str], out: dict, info: StepInfo, lr: float, wd: float) -> None:
        """After an optimizer step: the skip streak (and the stop past ``max_bad_steps``), the EMA
        hook, and every ``log_every`` steps a log record with the objective's health checks."""
        tc, p, acc = self.tc, self.p, self.accelerator
        p.step += 1
        if bad_step is not None:
            p.bad_streak += 1
            msg = (f"step {p.step} skipped: non-finite {bad_step} ({p.bad_streak} in a row, stop after "
                   f"{tc.max_bad_steps})")
            self.log({"step": p.step, "epoch": p.epoch + 1, "skipped_step": bad_step, "warnings": [msg]})
            if self.main:
                self.bar.write(f"warning: {msg}")
            if p.bad_streak >= tc.max_bad_steps:
                raise TrainingDiverged(
                    f"The {bad_step} were not finite for {p.bad_streak} steps in a row, up to step {p.step} "
                    f"(epoch {p.epoch + 1}); the last good checkpoint "
                    f"({latest_checkpoint(self.run_dir) or 'none yet'}) is intact. Likely causes: a learning rate "
                    "too high (lower train.blr, or set train.clip_grad) or fp16 overflow (use train.precision bf16 or "
                    "no); then --resume.")
            return
        p.bad_streak, p.applied = 0, p.applied + 1
        self.raw.after_optimizer_step(info)
        if p.step % tc.log_every:
            return
        w = p.window
        extras = {k: acc.reduce(v.detach().float(), reduction="mean").item() for k, v in out.items() if k != "loss"}
        record = {"step": p.step, "epoch": p.epoch + 1, "loss": w.loss / w.batches if w.batches else math.nan,
                  "lr": lr, "weight_decay": wd, "images_per_s": w.images / (time.perf_counter() - self.window_t0),
                  **extras}
        warnings = self.raw.check_health(record)
        if warnings:
            record["warnings"] = warnings
            if self.main:
                for warning in warnings:
                    self.bar.write(f"warning (step {p.step}): {warning}")
        self.log(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        p.window, self.window_t0 = Tally(), time.perf_counter()

    def _epoch_skipped(self) -> tuple[int, Optional[dict]]:
        """-> (unreadable draws this epoch on all processes, per-shard bad samples for a stream or None)."""
        acc = self.accelerator
        if not isinstance(self.loader, StreamLoader):
            local = torch.tensor(self.p.epoch_tally.skipped, device=acc.device)
            return int(acc.reduce(local, "sum")), None
        bad_per_shard = bad_sample_report(sum(gather_object([self.loader.bad_samples]), Counter()))
        skipped = self.p.epoch_tally.skipped + sum(n for kinds in bad_per_shard.values() for n in kinds.values())
        if not self.p.counts_checked:
            self.p.counts_checked = check_shard_counts(acc, self.loader, self.train_set, self.log, self.p.epoch)
        return skipped, bad_per_shard

    def _end_epoch(self, is_last: bool) -> None:
        """The epoch's record and checks, then (as due) the online k-NN, a checkpoint and export, pictures."""
        tc, acc, p = self.tc, self.accelerator, self.p
        epoch, t = p.epoch, p.epoch_tally
        skipped, bad_per_shard = self._epoch_skipped()
        dt = time.perf_counter() - self.epoch_t0
        record = {"epoch": epoch + 1, "step": p.step, "epoch_loss": t.loss / max(1, t.batches),
                  "images_per_s": (t.batches - self.epoch_batches0) * tc.batch_size * acc.num_processes / dt,
                  "skipped_images": skipped, "epoch_time_s": dt}
        if bad_per_shard:
            record["bad_samples"] = bad_per_shard
        self.log(record)
        acc.print(f"epoch {epoch + 1}/{tc.epochs}  loss {record['epoch_loss']:.4f}  {record['images_per_s']:.0f} img/s"
                  f"  {dt:.0f} s{self._time_left(is_last)}"
                  + (f"  skipped {skipped} unreadable images" if skipped else "")
                  + (f" in {len(bad_per_shard)} shard(s), counts per shard in log.jsonl" if bad_per_shard else ""))
        # a folder replaces an unreadable draw (counted once); a stream drops its bad samples
        tried = t.batches * tc.batch_size * acc.num_processes + (skipped if bad_per_shard else 0)
        if skipped > tc.max_unreadable * tried:
            raise DataError(too_many_unreadable(self.train_set, skipped, tried, tc.max_unreadable, bad_per_shard))
        if tc.knn_every and self.knn_sets is not None and ((epoch + 1) % tc.knn_every == 0 or is_last):
            if self.main or sharded(acc):  # under FSDP every process takes part in each forward
                with gathered(acc, self.model):
                    knn = online_knn(acc, self.raw, self.knn_sets, tc)
                self.log({"epoch": epoch + 1, "step": p.step, **knn})
                acc.print(f"epoch {epoch + 1}/{tc.epochs}  online k-NN (k={tc.knn_k}) top-1 {knn['knn_top1']:.2f}")
            acc.wait_for_everyone()
        self._check_learned()
        if (epoch + 1) % tc.save_every == 0 or is_last:
            save_checkpoint(acc, self.run_dir, epoch, p.step, keep=tc.keep_checkpoints)
            export(acc, self.model, self.raw, self.cfg, self.run_dir)
        if (self.main or sharded(acc)) and self.picture_imgs is not None and \
                ((epoch + 1) % tc.picture_every == 0 or is_last):
            with gathered(acc, self.model):
                save_pictures(acc, self.raw, self.picture_imgs, self.run_dir / f"pictures_epoch{epoch + 1:04d}.png")

    def _time_left(self, is_last: bool) -> str:
        """', about 0:14:05 left': this session's seconds an epoch (the online k-NN, checkpoints and
        pictures included; a resumed partial epoch counts as its part) times the epochs still to
        run; '' after the last."""
        if is_last:
            return ""
        done = self.p.epoch + 1 - self.start_epoch
        per_epoch = (time.perf_counter() - self.run_t0) / done
        return f", about {timedelta(seconds=round(per_epoch * (self.last_epoch - self.p.epoch)))} left"

    def _check_learned(self) -> None:
        if self.p.applied == 0:  # nothing learned: neither checkpoint nor export an untrained backbone
            raise TrainingDiverged(
                f"Every step of the run so far ({self.p.step} up to epoch {self.p.epoch + 1}) was skipped for a "
                "non-finite loss or gradients, so nothing was learned; check the objective's settings (e.g. a mask "
                "ratio that masks nothing) and train.blr, then start again.")

    def _stopped(self, signum: int) -> RunStopped:
        """A checkpoint at this step (mid-epoch, unless the epoch just ended and saved one), the
        line that says so, then the exception that ends the run. Every process leaves together:
        a launcher tears down the others as soon as one exits non-zero."""
        p, acc, name = self.p, self.accelerator, signal.Signals(signum).name
        if p.step == 0:
            return RunStopped(f"Stopped by {name} before the first step; nothing was trained.", signum, None)
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None or read_meta(ckpt)["step"] != p.step:
            self._check_learned()
            progress = dataclasses.asdict(p)
            ckpt = save_checkpoint(acc, self.run_dir, p.epoch, p.step, keep=self.tc.keep_checkpoints, progress=progress)
            export(acc, self.model, self.raw, self.cfg, self.run_dir)
        where = f"epoch {p.epoch + 1}, batch {p.batches_done} of {len(self.loader)}"
        stopped = RunStopped(f"Stopped by {name} at step {p.step} ({where}); checkpoint {ckpt} written: --resume "
                             "continues from it.", signum, ckpt)
        acc.print(str(stopped))
        stopped.announced = True
        acc.wait_for_everyone()
        return stopped


def pretrain(cfg, objective: torch.nn.Module, train_set, picture_imgs: Optional[torch.Tensor] = None,
             collate_fn=None, knn_sets: Optional[tuple] = None, stop: Optional[StopRequest] = None) -> Path:
    """Run (or resume) pretraining of ``objective`` on ``train_set``; returns the run directory.

    ``cfg`` is an entry-point config with ``out``, ``resume``, ``model`` and ``train`` fields;
    ``train_set`` yields ``(image, label, skipped)`` (``collate_fn`` batches them, default
    stacking); ``picture_imgs`` (B, C, H, W) is the fixed batch the picture grids are made from;
    ``knn_sets`` = (database, queries), labelled datasets for the online k-NN (``train.knn_every``);
    ``stop``: the signal handlers' flag (``StopRequest``), checked at every optimizer step.
    """
    return Trainer(cfg, objective, train_set, picture_imgs, collate_fn, knn_sets).run(stop)
