"""A run's ``start`` as a stage before the run: the other objective's run it names is trained (or
resumed, or reused when finished) in ``OUT/start-*/``, and the run then starts from its backbone.
What a start is and which objectives can be one: ``sslvit.recipes.start_run``."""
from __future__ import annotations

import contextlib
from pathlib import Path

import yaml

from sslvit.config import ConfigError, plain_dict
from sslvit.runtime.devices import process_state, release_accelerator
from sslvit.train.checkpoint import latest_checkpoint, read_meta
from sslvit.train.stop_signals import StopRequest


def train_start(cfg, stop: StopRequest | None):
    """``start``: train the run it names in ``OUT/start-*/`` (resumed with ``--resume``, reused when
    finished), then start this run from its backbone (``cfg.init``); -> the start, or None (no start,
    ``--init`` given, or a resumed run that has its own checkpoint)."""
    start = cfg.start_run() if hasattr(cfg, "start_run") else None
    if start is None or (cfg.resume and latest_checkpoint(Path(cfg.out).expanduser()) is not None):
        return None
    say = process_state().print  # the main process's lines, as --init's
    if finished_run(start.out):
        check_reusable(start)
        say(f"start: {start.what}, finished in {start.out}: reused (--start none trains from random weights)",
            flush=True)
    else:
        say(f"start: {start.what}, trained first in {start.out} (--start none trains from random weights)", flush=True)
        resume = ["--resume"] if cfg.resume and latest_checkpoint(start.out) is not None else []
        from sslvit.train.entry import run_pretraining  # the entry runs this stage: imported when it does

        try:
            run_pretraining(start.config_cls, start.preset, start.argv + resume, stop)
            # the main process writes the start's backbone and report after the others have left the
            # loop: every process reads it only once it is there (a race that failed one CI run)
            process_state().wait_for_everyone()
        finally:
            release_accelerator()
            with contextlib.suppress(OSError):
                start.out.parent.rmdir()  # the run folder the start made, if its failure left it empty
        say(f"start: done; this run starts from {start.out}", flush=True)
    cfg.init = str(start.out / "backbone.safetensors")  # the exported backbone, as quality.py's OBJ@START loads it
    return start


def finished_run(run_dir: Path) -> bool:
    """``run_dir`` holds a run that trained all its epochs: its newest checkpoint ends its last one."""
    ckpt, config = latest_checkpoint(run_dir), run_dir / "config.yaml"
    if ckpt is None or not config.is_file() or not (run_dir / "backbone.safetensors").is_file():
        return False
    meta = read_meta(ckpt)
    epochs = int((yaml.safe_load(config.read_text()) or {}).get("train", {}).get("epochs", 0))
    return "progress" not in meta and meta["epoch"] + 1 >= epochs


def check_reusable(start) -> None:
    """A finished start is reused only if it is the run this one would train: same data, seed,
    epochs and backbone; else one sentence (it is never overwritten)."""
    saved = yaml.safe_load((start.out / "config.yaml").read_text()) or {}
    from sslvit.train.entry import run_config  # the entry runs this stage: imported when it does

    now = plain_dict(run_config(start.config_cls, start.preset, start.argv))
    keys = [("data",), ("train", "seed"), ("train", "epochs")] + \
        [("model", k) for k in now["model"] if k != "grad_checkpointing"]
    diffs = [f"{'.'.join(k)}: {_at(saved, k)!r} there, {_at(now, k)!r} now" for k in keys
             if _at(saved, k) != _at(now, k)]
    if diffs:
        raise ConfigError(f"'{start.out}' holds a finished start of other keys ({'; '.join(diffs[:3])}); remove it "
                          "to train it again, or pass a new --out.")


def _at(d, key: tuple):
    """d[key[0]][key[1]]..., or None where a level is missing."""
    for k in key:
        d = d.get(k) if isinstance(d, dict) else None
    return d
