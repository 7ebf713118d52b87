"""The one training loop, shared by every objective.

An objective is an ``nn.Module`` with
  - ``forward(imgs) -> dict`` holding a scalar ``loss`` and any other scalar tensors to log
    (``imgs`` is whatever the data loader yields: a (B, C, H, W) batch, or DINO's list of
    crops grouped by resolution);
  - ``backbone`` (or ``exported_backbone()``): the ``SSLViT`` that is exported;
  - optional hooks, each called on every process:
      ``no_weight_decay() -> set[str]``;
      ``on_epoch_start(epoch)``;
      ``on_step_start(step, total_steps, steps_per_epoch)`` before every forward (schedules
        that the forward reads, e.g. DINO's teacher temperature);
      ``on_batch(key, rows, global_size)`` before every forward: a seed for the optimizer step
        and the rows this micro-batch holds in the step's global batch, so random draws keyed
        by them (MAE's masks) do not depend on how the batch is split over processes;
      ``before_optimizer_step(epoch)`` after backward and clipping (e.g. dropping gradients);
      ``after_step(step, total_steps)`` after every optimizer step (e.g. an EMA teacher);
      ``check_health(record) -> list[str]`` on every logged record (warnings to show);
      ``pictures(imgs) -> dict`` (columns of a picture grid; or ``(columns, normalized)``
        where ``normalized[name]`` False marks a column already in [0, 1]).
The loop owns devices, processes, precision and gradient accumulation (accelerate), the
AdamW optimizer, the per-iteration schedules, logging, checkpoints and export.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import (DataLoaderConfiguration, DistributedType, broadcast_object_list, gather_object,
                               set_seed)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sslvit.config import save_yaml, to_dict
from sslvit.data.folder import DataError
from sslvit.data.shard_reader import ShardDataset
from sslvit.data.stream_loader import StreamLoader, bad_sample_report, wrong_counts
from sslvit.eval.features import extract_features
from sslvit.eval.knn import knn_classify
from sslvit.models.export import export_backbone
from sslvit.train.checkpoint import (CheckpointError, check_writable, latest_checkpoint, read_meta, resumable_checkpoint,
                                     save_checkpoint, verify_loadable)
from sslvit.train.compiled import check_compile_backend, compile_objective
from sslvit.train.devices import build_accelerator, process_state
from sslvit.train.optim import build_adamw, clip_grad_per_param_
from sslvit.train.pictures import save_columns
from sslvit.train.precision import PRECISIONS, PrecisionChoice, measure_step, resolve_precision
from sslvit.train.schedules import cosine_schedule, scaled_lr


@dataclass
class TrainConfig:
    epochs: int = 800
    batch_size: int = 64  # per process
    accum_steps: int = 1  # gradient accumulation
    blr: float = 1.5e-4  # base lr; lr = blr * batch_size * processes * accum_steps / 256
    lr: Optional[float] = None  # absolute lr, overrides blr
    min_lr: float = 0.0
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None  # cosine weight-decay schedule end; None keeps it constant
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None  # max grad norm
    clip_mode: str = "global"  # global (one norm over all parameters) | per_param (DINO: each parameter's own norm)
    precision: str = "auto"  # auto (GPU: bf16; CPU: the faster of fp32 and bf16, timed) | fp32 (= no) | bf16 | fp16
    compile: str = "off"  # off | a torch.compile backend (inductor: fuses the elementwise tail; minutes to compile)
    seed: int = 0
    num_workers: int = 4
    log_every: int = 20  # optimizer steps
    save_every: int = 20  # epochs between checkpoints (the last epoch is always saved)
    picture_every: int = 20  # epochs between picture grids (the last epoch always gets one)
    keep_checkpoints: int = 2
    knn_every: int = 0  # epochs between online k-NN checks on held-out labelled data; 0: off
    knn_pool: str = "cls"  # features of the online k-NN: cls | avg
    knn_k: int = 20
    stop_after: Optional[int] = None  # end this invocation after N epochs; continue later with --resume
    max_bad_steps: int = 10  # consecutive steps with a non-finite loss or gradient (each skipped) before stopping
    max_unreadable: float = 0.5  # share of an epoch's images that may be unreadable (skipped) before the run stops
    shuffle_buffer: int = 1000  # shards: samples held per data-loader worker for shuffling
    data_resampled: bool = False  # shards: draw shards with replacement forever (epoch = the index's count)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision '{self.precision}' is unknown; use auto, fp32 (or no), bf16 or fp16.")
        if self.compile != "off":
            check_compile_backend(self.compile)
        if self.clip_mode not in ("global", "per_param"):
            raise ValueError(f"train.clip_mode '{self.clip_mode}' is unknown; use global or per_param.")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "save_every", "picture_every",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1 (got {getattr(self, name)}).")
        for name in ("blr", "lr", "clip_grad"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"train.{name} must be > 0 (got {value}).")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "weight_decay_end"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"train.{name} must be >= 0 (got {value}).")
        if not 0.0 <= self.max_unreadable <= 1.0:
            raise ValueError(f"train.max_unreadable is a share in [0, 1] (got {self.max_unreadable}).")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must each be in [0, 1) (got {list(self.betas)}); AdamW's are 0.9,0.999.")


class TrainingDiverged(RuntimeError):
    pass


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


def _exported(model) -> torch.nn.Module:
    return model.exported_backbone() if hasattr(model, "exported_backbone") else model.backbone


def _clip_or_measure(accelerator, model, tc: TrainConfig) -> torch.Tensor:
    """Clip as configured; -> the total gradient norm (inf or nan when a gradient is not finite)."""
    if tc.clip_grad is not None and tc.clip_mode == "global":
        return accelerator.clip_grad_norm_(model.parameters(), tc.clip_grad)
    accelerator.unscale_gradients()
    if tc.clip_grad is not None:
        return clip_grad_per_param_(model.parameters(), tc.clip_grad)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def _export(accelerator, model, raw, cfg, run_dir: Path) -> None:
    """Export the backbone; called on every process, because FSDP gathers the full weights
    from all of them (elsewhere the main process writes what it holds)."""
    backbone, state = _exported(raw), None
    if accelerator.distributed_type == DistributedType.FSDP:
        full = accelerator.get_state_dict(model)
        prefix = next(name for name, m in raw.named_modules() if m is backbone) + "."
        state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    if accelerator.is_main_process:
        export_backbone(backbone, cfg.model, run_dir, state=state)


def pretrain(cfg, objective: torch.nn.Module, train_set, picture_imgs: Optional[torch.Tensor] = None,
             collate_fn=None, knn_sets: Optional[tuple] = None) -> Path:
    """Run (or resume) pretraining of ``objective`` on ``train_set``; returns the run directory.

    ``cfg`` is an entry-point config with ``out``, ``resume``, ``model`` and ``train`` fields;
    ``train_set`` yields ``(image, label, skipped)`` (``collate_fn`` batches them, default
    stacking); ``picture_imgs`` (B, C, H, W) is the fixed batch the picture grids are made from;
    ``knn_sets`` = (database, queries), labelled datasets for the online k-NN (``train.knn_every``).
    """
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
    choice = choose_precision(tc, objective, train_set, collate_fn, resume_from)
    accelerator = build_accelerator(
        mixed_precision=choice.precision,
        gradient_accumulation_steps=tc.accum_steps,
        log_with="tensorboard",
        project_dir=str(run_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    main = accelerator.is_main_process
    problem = None
    if main:
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
    if main:
        save_yaml(cfg, run_dir / "config.yaml")
    set_seed(tc.seed)
    effective_batch = tc.batch_size * accelerator.num_processes * tc.accum_steps
    base_lr = tc.lr if tc.lr is not None else scaled_lr(tc.blr, effective_batch)
    optimizer = build_adamw(objective, base_lr, tc.weight_decay, tc.betas)
    if isinstance(train_set, ShardDataset):
        # a stream is split by shards, per process, in the dataset itself: accelerate must not split it again
        loader = StreamLoader(train_set, tc.batch_size, accelerator.num_processes, tc.num_workers, collate_fn,
                              device=accelerator.device, pin_memory=torch.cuda.is_available())
        model, optimizer = accelerator.prepare(objective, optimizer)
    else:
        loader = DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                            num_workers=tc.num_workers, pin_memory=torch.cuda.is_available(), collate_fn=collate_fn,
                            persistent_workers=False)  # fresh worker seeds per epoch keep resume exact
        model, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    raw = accelerator.unwrap_model(model)
    if tc.compile != "off":
        accelerator.print(compile_objective(raw, tc.compile))

    steps_per_epoch = len(loader) // tc.accum_steps
    total_steps = tc.epochs * steps_per_epoch
    warmup_steps = int(tc.warmup_epochs * steps_per_epoch)
    wd_end = tc.weight_decay if tc.weight_decay_end is None else tc.weight_decay_end

    start_epoch, step = 0, 0
    if resume_from is not None:
        verify_loadable(resume_from)
        accelerator.load_state(str(resume_from))
        meta = read_meta(resume_from)
        start_epoch, step = meta["epoch"] + 1, meta["step"]
        accelerator.print(f"Resuming from {resume_from} (epoch {start_epoch}, step {step}).")
    elif cfg.resume:
        accelerator.print(f"No complete checkpoint in '{run_dir}'; starting from scratch.")

    accelerator.init_trackers("tensorboard", config=_flat(to_dict(cfg)))
    log_file = open(run_dir / "log.jsonl", "a") if main else None
    if main:
        accelerator.print(f"Run directory: {run_dir}  |  {accelerator.num_processes} process(es) on "
                          f"{accelerator.device}, precision {choice.name} ({choice.reason}), effective batch "
                          f"{effective_batch}, lr {base_lr:.3g}, {steps_per_epoch} steps/epoch")

    def log(record: dict) -> None:
        if main:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    log({"step": step, "precision": choice.name, "precision_reason": choice.reason,
         **({"precision_timings_s": choice.timings, "precision_choice_s": choice.cost_s} if choice.timings else {})})
    last_epoch = tc.epochs - 1 if tc.stop_after is None else min(tc.epochs, start_epoch + tc.stop_after) - 1
    window_finite, bad_streak, bad_step, micro, applied, counts_checked = True, 0, None, 0, 0, False
    try:
        for epoch in range(start_epoch, last_epoch + 1):
            loader.set_epoch(epoch)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            if hasattr(raw, "on_epoch_start"):
                raw.on_epoch_start(epoch)
            model.train()
            epoch_loss, epoch_batches, epoch_skipped = 0.0, 0, 0
            win_loss, win_n, win_imgs, win_t0 = 0.0, 0, 0, time.perf_counter()
            epoch_t0 = win_t0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not main, leave=False,
                       dynamic_ncols=True)
            for imgs, labels, skipped in bar:
                if hasattr(raw, "on_step_start"):
                    raw.on_step_start(step, total_steps, steps_per_epoch)
                if hasattr(raw, "on_batch"):
                    # this micro-batch's rows in the step's global batch, in the order accelerate's
                    # sampler deals batches: micro-batch-major, then process
                    b = len(labels)
                    start = (micro * accelerator.num_processes + accelerator.process_index) * b
                    raw.on_batch(tc.seed * 2**32 + step, slice(start, start + b), effective_batch)
                micro = (micro + 1) % tc.accum_steps
                lr = cosine_schedule(step, total_steps, base_lr, tc.min_lr, warmup_steps)
                wd = cosine_schedule(step, total_steps, tc.weight_decay, wd_end)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                    group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0
                with accelerator.accumulate(model):
                    out = model(imgs)
                    loss = out["loss"]
                    accelerator.backward(loss)
                    # one small all-reduce: every process sees the same value, so all skip (or stop) together
                    loss_val = accelerator.reduce(loss.detach().float(), reduction="mean").item()
                    window_finite = window_finite and math.isfinite(loss_val)
                    bad_step = None
                    if accelerator.sync_gradients:
                        grad_norm = _clip_or_measure(accelerator, model, tc)
                        # with fp16 the grad scaler skips overflowing steps itself and lowers its scale
                        grads_finite = accelerator.scaler is not None or bool(torch.isfinite(grad_norm))
                        if not window_finite or not grads_finite:
                            bad_step = "loss" if not window_finite else "gradients"
                            optimizer.zero_grad(set_to_none=True)  # the step is not applied
                        elif hasattr(raw, "before_optimizer_step"):
                            raw.before_optimizer_step(epoch)
                    if bad_step is None:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                n_imgs = len(labels) * accelerator.num_processes
                if math.isfinite(loss_val):
                    epoch_loss += loss_val
                    epoch_batches += 1
                    win_loss += loss_val
                    win_n += 1
                epoch_skipped += int(skipped.sum())
                win_imgs += n_imgs
                if not accelerator.sync_gradients:
                    continue
                window_finite = True
                step += 1
                if bad_step is not None:
                    bad_streak += 1
                    msg = (f"step {step} skipped: non-finite {bad_step} ({bad_streak} in a row, "
                           f"stop after {tc.max_bad_steps})")
                    log({"step": step, "epoch": epoch + 1, "skipped_step": bad_step, "warnings": [msg]})
                    if main:
                        bar.write(f"warning: {msg}")
                    if bad_streak >= tc.max_bad_steps:
                        last = latest_checkpoint(run_dir)
                        raise TrainingDiverged(
                            f"The {bad_step} were not finite for {bad_streak} steps in a row, up to step {step} "
                            f"(epoch {epoch + 1}); the last good checkpoint ({last or 'none yet'}) is intact. "
                            "Likely causes: a learning rate too high (lower train.blr, or set train.clip_grad) or "
                            "fp16 overflow (use train.precision bf16 or no); then --resume.")
                    continue
                bad_streak, applied = 0, applied + 1
                if hasattr(raw, "after_step"):
                    raw.after_step(step, total_steps)
                if step % tc.log_every == 0:
                    dt = time.perf_counter() - win_t0
                    extras = {k: accelerator.reduce(v.detach().float(), reduction="mean").item()
                              for k, v in out.items() if k != "loss"}
                    record = {"step": step, "epoch": epoch + 1, "loss": win_loss / win_n if win_n else math.nan, "lr": lr,
                              "weight_decay": wd, "images_per_s": win_imgs / dt, **extras}
                    warnings = raw.check_health(record) if hasattr(raw, "check_health") else []
                    if warnings:
                        record["warnings"] = warnings
                        if main:
                            for w in warnings:
                                bar.write(f"warning (step {step}): {w}")
                    log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                    win_loss, win_n, win_imgs, win_t0 = 0.0, 0, 0, time.perf_counter()
            bar.close()
            bad_per_shard = None
            if isinstance(loader, StreamLoader):
                bad_per_shard = bad_sample_report(sum(gather_object([loader.bad_samples]), Counter()))
                epoch_skipped += sum(n for kinds in bad_per_shard.values() for n in kinds.values())
                if not counts_checked:
                    counts_checked = _check_shard_counts(accelerator, loader, train_set, log, epoch)
            else:
                epoch_skipped = int(accelerator.reduce(torch.tensor(epoch_skipped, device=accelerator.device), "sum"))
            dt = time.perf_counter() - epoch_t0
            record = {"epoch": epoch + 1, "step": step, "epoch_loss": epoch_loss / max(1, epoch_batches),
                      "images_per_s": epoch_batches * tc.batch_size * accelerator.num_processes / dt,
                      "skipped_images": epoch_skipped, "epoch_time_s": dt}
            if bad_per_shard:
                record["bad_samples"] = bad_per_shard
            log(record)
            accelerator.print(f"epoch {epoch + 1}/{tc.epochs}  loss {record['epoch_loss']:.4f}  "
                              f"{record['images_per_s']:.0f} img/s" +
                              (f"  skipped {epoch_skipped} unreadable images" if epoch_skipped else "") +
                              (f" in {len(bad_per_shard)} shard(s), counts per shard in log.jsonl" if bad_per_shard else ""))
            # a folder replaces an unreadable draw (counted once); a stream drops its bad samples
            tried = epoch_batches * tc.batch_size * accelerator.num_processes + (epoch_skipped if bad_per_shard else 0)
            if epoch_skipped > tc.max_unreadable * tried:
                raise DataError(_too_many_unreadable(train_set, epoch_skipped, tried, tc.max_unreadable, bad_per_shard))
            is_last = epoch == last_epoch
            if tc.knn_every and knn_sets is not None and ((epoch + 1) % tc.knn_every == 0 or is_last):
                if main:
                    record = _online_knn(accelerator, raw, knn_sets, tc)
                    log({"epoch": epoch + 1, "step": step, **record})
                    accelerator.print(f"epoch {epoch + 1}/{tc.epochs}  online k-NN (k={tc.knn_k}) top-1 "
                                      f"{record['knn_top1']:.2f}")
                accelerator.wait_for_everyone()
            if applied == 0:  # nothing learned: neither checkpoint nor export an untrained backbone
                raise TrainingDiverged(
                    f"Every step of the run so far ({step} up to epoch {epoch + 1}) was skipped for a non-finite "
                    "loss or gradients, so nothing was learned; check the objective's settings (e.g. a mask ratio "
                    "that masks nothing) and train.blr, then start again.")
            if (epoch + 1) % tc.save_every == 0 or is_last:
                save_checkpoint(accelerator, run_dir, epoch, step, keep=tc.keep_checkpoints)
                _export(accelerator, model, raw, cfg, run_dir)
            if main and picture_imgs is not None and hasattr(raw, "pictures") and \
                    ((epoch + 1) % tc.picture_every == 0 or is_last):
                _pictures(accelerator, raw, picture_imgs, run_dir / f"pictures_epoch{epoch + 1:04d}.png")
    finally:
        if log_file is not None:
            log_file.close()
        accelerator.end_training()
    return run_dir


def _check_shard_counts(accelerator, loader: StreamLoader, train_set, log, epoch: int) -> bool:
    """Compare the shards read whole this epoch (all processes) with the index's counts; warn once
    with the shard names and the true counts. -> True once any shard has been read whole."""
    reads = {}
    for part in gather_object([loader.shard_reads]):
        reads.update(part)
    wrong = wrong_counts(getattr(train_set, "claimed", {}), reads)
    if wrong:
        shown = ", ".join(f"{name}: {claim} in the index, {n} read" for name, (claim, n) in list(wrong.items())[:3])
        msg = (f"the shard index's sample counts are wrong for {len(wrong)} of the {len(reads)} shards read whole "
               f"({shown}); the epoch's length comes from the index, so it re-reads or skips data: write the index "
               "again with `python -m sslvit.data.shards`.")
        log({"epoch": epoch + 1, "shard_counts_wrong": {k: list(v) for k, v in wrong.items()}, "warnings": [msg]})
        accelerator.print(f"warning: {msg}")
    return bool(reads)


def _too_many_unreadable(train_set, skipped: int, tried: int, share: float, bad_per_shard) -> str:
    if bad_per_shard:
        where = "in shards " + ", ".join(list(bad_per_shard)[:3]) + " (counts per shard in log.jsonl)"
    else:
        first = train_set.unreadable(3) if hasattr(train_set, "unreadable") else []
        where = "e.g. " + ", ".join(f"'{f}'" for f in first) if first else "see the warnings above"
    return (f"{skipped} of the {tried} images read this epoch ({skipped / tried:.0%}) could not be decoded, more than "
            f"train.max_unreadable {share:.0%} allows: {where}; fix or remove them, or raise train.max_unreadable.")


def _online_knn(accelerator, raw, knn_sets, tc: TrainConfig) -> dict:
    """k-NN top-1/top-5 of the backbone that is exported (DINO: the teacher) on held-out labelled
    data, with the probe's own extraction and search; no copy of the model is made."""
    backbone = _exported(raw)
    was_training = backbone.training
    # a DataLoader draws its base seed from the global RNG: fork it so the training stream
    # (and so resume) does not depend on whether the monitor is on
    with torch.random.fork_rng(devices=[]), accelerator.autocast():
        kw = dict(pool=tc.knn_pool, batch_size=256, device=accelerator.device)
        ftr, ytr = extract_features(backbone, knn_sets[0], desc="online k-NN: train", **kw)
        fva, yva = extract_features(backbone, knn_sets[1], desc="online k-NN: val", **kw)
    backbone.train(was_training)
    res = knn_classify(ftr.numpy(), ytr.numpy(), fva.numpy(), yva.numpy(), ks=(tc.knn_k,))
    (r,) = res.values()
    return {"knn_top1": r["top1"], "knn_top5": r["top5"]}


def _pictures(accelerator, raw, imgs: torch.Tensor, path: Path) -> None:
    was_training = raw.training
    raw.eval()
    # pictures draw their own masks: a forked RNG keeps the training stream (and so resume) unchanged
    cuda = accelerator.device.type == "cuda"
    with torch.random.fork_rng(devices=[accelerator.device] if cuda else []), accelerator.autocast():
        columns = raw.pictures(imgs.to(accelerator.device))
    raw.train(was_training)
    normalized = None
    if isinstance(columns, tuple):
        columns, normalized = columns
    save_columns(columns, path, normalized)
