"""What every ``pretrain/*.py`` script does: build the config, the data and the objective,
run the shared loop, and turn a user's mistake into one clear sentence."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from importlib import resources
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed

from sslvit.config import ConfigError, build_config, load_text_yaml, plain_dict
from sslvit.data.dataset import build_dataset, check_labelled, is_embedded
from sslvit.data.sample import spread_sample
from sslvit.data.folder import DataError
from sslvit.data.shard_reader import build_shard_dataset, is_shard_spec
from sslvit.data.transforms import eval_transform
from sslvit.models.checkpoint_layouts import WeightsError, import_file
from sslvit.models.init_from import load_imported
from sslvit.train.checkpoint import latest_checkpoint
from sslvit.train.data_recipe import preset_for, summary
from sslvit.runtime.devices import process_state
from sslvit.runtime.errors import USER_ERRORS, TrainingDiverged, explained
from sslvit.runtime.process_end import ends_process, say_error
from sslvit.train.run_lock import run_dir_lock
from sslvit.train.start_stage import train_start
from sslvit.train.stop_signals import RunStopped, StopRequest, follow_launcher

NUM_PICTURES = 8


def load_presets(name: str | None) -> dict:
    """``sslvit/presets/NAME.yaml`` (keys per embedded data set), or nothing: a preset is optional."""
    file = resources.files("sslvit.presets").joinpath(f"{name}.yaml") if name else None
    return load_text_yaml(file.read_text()) if file is not None and file.is_file() else {}


def run_config(config_cls, preset: str | None = None, argv=None):
    """The run's config. A fresh run: defaults <- preset <- --config <- command line. ``--resume``
    continues the run as it was configured: its own ``config.yaml`` <- --config <- command line
    (keys given are explicit changes; ``check_same_run`` refuses those of the architecture)."""
    chosen = []

    def recipe_for(data: str):
        recipe, reason = preset_for(load_presets(preset), data)
        chosen.append(reason)
        return recipe

    cfg = build_config(config_cls, argv, presets=recipe_for)
    if getattr(cfg, "init", None) and cfg.resume:
        raise ConfigError(f"--init and --resume were both given: --resume continues the run in '{cfg.out}' exactly "
                          "(weights, optimizer, step), --init starts a new run from a file's weights at step 0; "
                          "pass one of them.")
    saved_file = Path(cfg.out).expanduser() / "config.yaml"
    if not cfg.resume or not saved_file.is_file():
        # RANK, not PartialState: built now, before the Accelerator, the state would miss the CPU flag
        # and make every process the main one
        if chosen:
            reason, _, note = chosen[-1].partition("\n")
            cfg._recipe_line = f"{reason}; {summary(cfg)}" + (f"\n{note}" if note else "")  # printed once valid
        return cfg
    saved = load_text_yaml(saved_file.read_text(), source=f"'{saved_file}'") or {}
    known = {f.name for f in dataclasses.fields(config_cls)}
    foreign = [k for k in saved if k not in known]
    if foreign:
        raise ConfigError(f"'{saved_file.parent}' holds a run of another objective (its config.yaml has the section "
                          f"'{foreign[0]}', which {config_cls.__name__} lacks); resume it with its own pretrain/ "
                          "script, or pass a new --out.")
    if isinstance(saved.get("model"), dict):
        saved["model"].setdefault("stem_norm", "layer")  # a run from before the key: the stem it was built with
    if isinstance(saved.get("train"), dict):
        saved["train"].setdefault("hflip", True)  # a run from before the key flipped every image
    return build_config(config_cls, argv, base=saved)


def run_pretraining(config_cls, preset: str | None = None, argv=None, stop: StopRequest | None = None) -> Path:
    cfg = run_config(config_cls, preset, argv)
    if hasattr(cfg, "validate"):
        cfg.validate()
    else:
        cfg.model.validate()
        cfg.train.validate()
    if Path(cfg.out).expanduser().is_file():
        raise ConfigError(f"--out '{cfg.out}' is a file; pass --out a directory (a new one, or a run's own with "
                          "--resume).")
    if cfg.resume:
        check_same_run(cfg)
    if getattr(cfg, "_recipe_line", None) and int(os.environ.get("RANK", "0")) == 0:
        print(cfg._recipe_line, flush=True)  # after validation: a mistake is still its one sentence alone
    start = train_start(cfg, stop)
    train_set = training_set(cfg)
    picture_set = build_dataset(cfg.data, "val" if is_embedded(cfg.data) else "all", cfg.model.img_size,
                                transform=eval_transform(cfg.model.img_size))
    picture_imgs = spread_sample(picture_set, NUM_PICTURES, cfg.train.seed)  # spread over classes
    if not picture_imgs:
        raise DataError(f"No readable sample in '{cfg.data}': every image failed to decode; check the data.")
    picture_imgs = torch.stack(picture_imgs)
    from sslvit.train.loop import pretrain  # timm, torchvision, faiss: here, so --help and bad input answer at once

    with removed_if_it_fails(Path(cfg.out).expanduser(), keep=(start.out.name,) if start else ()):
        set_seed(cfg.train.seed)  # the initial weights are part of what a seed reproduces
        objective = cfg.build_objective()  # BEiT fits (and writes) its tokenizer here
        init_weights(cfg, objective)
        collate_fn = cfg.collate_fn() if hasattr(cfg, "collate_fn") else None
        knn = knn_sets(cfg)
        with run_dir_lock(Path(cfg.out)):  # a second run on the same --out is refused, not interleaved
            return pretrain(cfg, objective, train_set, picture_imgs, collate_fn=collate_fn, knn_sets=knn, stop=stop)


def init_weights(cfg, objective) -> None:
    """``--init PATH``: the file's weights into the objective's ``init_targets()``, and what was
    loaded, copied and left fresh as the run's first lines. A run that resumes from its own
    checkpoint (its config.yaml keeps the ``init`` it started from) loads nothing here."""
    path = getattr(cfg, "init", None)
    if not path or (cfg.resume and latest_checkpoint(Path(cfg.out).expanduser()) is not None):
        return
    try:
        lines = load_imported(objective, objective.init_targets(), import_file(path))
    except WeightsError as e:
        raise WeightsError(f"--init {path}: {e}") from None
    state = process_state()
    for i, line in enumerate(lines):
        state.print(f"--init {path}: {line}" if i == 0 else f"  {line}")


@contextlib.contextmanager
def removed_if_it_fails(run_dir: Path, keep: tuple = ()):
    """A run folder this invocation creates is removed when the run fails before its first
    checkpoint, so no half-written run (config.yaml, log.jsonl, tensorboard/, a tokenizer) is
    left; a diverged run keeps its folder, marked by a FAILED file holding the error, because its
    log.jsonl shows the non-finite steps. Entries named in ``keep`` (the run's start, trained
    before) stay, and the folder counts as created when they were all it held."""
    existed = run_dir.exists() and any(p.name not in keep for p in run_dir.iterdir())
    try:
        yield
    except BaseException as e:
        if not existed and run_dir.is_dir() and latest_checkpoint(run_dir) is None and process_state().is_main_process:
            if isinstance(e, TrainingDiverged):
                (run_dir / "FAILED").write_text(f"{e}\n")
            else:
                for p in run_dir.iterdir():
                    if p.name not in keep:
                        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
        raise


RESUMABLE_CHANGES = ("train", "data", "out", "resume")  # sections a resumed run may change
RESUMABLE_KEYS = {("model", "grad_checkpointing")}  # and keys that change memory, not the model


def check_same_run(cfg) -> None:
    """--resume into a run directory whose checkpoint has another architecture or objective setup:
    one sentence naming the keys, before anything is loaded."""
    saved_file = Path(cfg.out).expanduser() / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    now = plain_dict(cfg)
    diffs = [f"{section}.{k}: {v!r} in the checkpoint, {now[section].get(k)!r} now"
             for section, values in saved.items() if section not in RESUMABLE_CHANGES and isinstance(values, dict)
             for k, v in values.items() if now.get(section, {}).get(k) != v and (section, k) not in RESUMABLE_KEYS]
    if diffs:
        raise ConfigError(f"The checkpoint in '{saved_file.parent}' is of another setup ({'; '.join(diffs[:3])}); "
                          "resume with the keys it was trained with, or pass a new --out.")


def training_set(cfg):
    """The run's data with its objective's transform: map-style, or for shards the shuffled
    stream (with bad-sample markers for the loop's per-shard counts)."""
    if is_shard_spec(cfg.data):
        return build_shard_dataset(cfg.data, "train", cfg.train_transform(), shuffle=True, seed=cfg.train.seed,
                                   markers=True, resampled=cfg.train.data_resampled,
                                   shuffle_buffer=cfg.train.shuffle_buffer, read_for=cfg.model.img_size)
    # 'train' everywhere: a folder's train/ (or all but the probes' held-out 20%), as shards read train.json,
    # so the probes never score images the backbone was trained on
    dataset = build_dataset(cfg.data, "train", cfg.model.img_size, transform=cfg.train_transform())
    dataset.seed = cfg.train.seed  # augmentations keyed by (seed, epoch, sample): see ImageDataset
    return dataset


def knn_sets(cfg) -> tuple | None:
    """(database, queries) for the online k-NN: the labelled train and val splits of the run's data
    at the backbone's size (a folder without train/ and val/ holds out a fixed 20% as queries)."""
    if not cfg.train.knn_every:
        return None
    size = cfg.model.img_size
    database = build_dataset(cfg.data, "train", size, transform=eval_transform(size))
    check_labelled(database, cfg.data, "train.knn_every", "put the images in one sub-folder per class, or set "
                   "train.knn_every 0")
    return database, build_dataset(cfg.data, "val", size, transform=eval_transform(size))


@contextlib.contextmanager
def ended_process_group():
    """The process group ends with the script, not with a run (a run's start is a run too): as
    ``Accelerator.end_training`` would, for a group torch made (the GPU backends warn of one left)."""
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


@ends_process
def main(config_cls, preset: str | None = None) -> None:
    """Entry point: errors a user can cause end as one sentence on stderr and exit code 2; SIGTERM
    and SIGINT stop at the next step with a checkpoint, one line, and exit code 128 + signal."""
    follow_launcher()
    try:
        with StopRequest() as stop, ended_process_group():
            run_dir = run_pretraining(config_cls, preset, stop=stop)
    except USER_ERRORS as e:
        say_error(str(e))
        raise SystemExit(2) from None
    except RuntimeError as e:  # torch's traceback from wherever the step was when memory or a worker ran out
        sentence = explained(e, "--train.batch_size", "--train.num_workers",
                             "run again with --resume, which continues from the latest checkpoint if one was written")
        if sentence is None:
            raise
        say_error(sentence)
        raise SystemExit(2) from None
    except RunStopped as e:
        if process_state().is_main_process and not e.announced:
            print(str(e), file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    if process_state().is_main_process:
        print(f"Done. Outputs in {run_dir}/ : backbone.safetensors, backbone.json, config.yaml, log.jsonl, "
              "checkpoints/, pictures_*.png, curves.png, report.html, tensorboard/")
