"""Atomic checkpoints and the exported backbone.

A checkpoint is accelerate's ``save_state`` folder (model with every head and decoder as
safetensors, optimizer, RNG states) plus ``meta.json``. It is written under a temporary
name and renamed into place, so a kill while saving never leaves a readable-looking but
incomplete checkpoint; ``--resume`` takes the newest folder that has ``meta.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from accelerate.utils import load as accelerate_load
from safetensors import safe_open

from sslvit.files import WRITE_ERRORS, free_on_its_disk, honour_umask, mend_write, reason
from sslvit.runtime.errors import CheckpointError
from sslvit.runtime.main_first import raised_together

CKPT_DIR = "checkpoints"


def check_writable(run_dir: Path, need_bytes: int) -> None:
    """Fail before any training when ``run_dir`` cannot be written or cannot hold a checkpoint."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"Cannot write to the output directory '{run_dir}' ({e.strerror or e}); pass --out a "
                              "writable directory.") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise CheckpointError(f"'{run_dir}' has {free / 1e9:.2f} GB free and this run's checkpoints need about "
                              f"{need_bytes / 1e9:.2f} GB; free some space or pass --out on another disk.")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _SharedTensorNotice(logging.Filter):
    """Drops accelerate's "Removed shared tensor {...} while saving" notice. A composite's parts
    hold one backbone under several names (``parts.mae.encoder.*``, ``parts.dino.student.backbone.*``),
    so safetensors keeps one name of each and every save listed the other names, about 180 of them;
    loading ties the aliases back (a resumed composite equals the unbroken run: test_composite)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def _without_shared_tensor_notice():
    logger, notice = logging.getLogger("accelerate.utils.other"), _SharedTensorNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def save_checkpoint(accelerator, run_dir: Path, epoch: int, step: int, keep: int = 2,
                    progress: Optional[dict] = None) -> Path:
    """Save the accelerate state at ``step`` atomically; keep the newest ``keep``. Without
    ``progress`` the checkpoint ends ``epoch`` (0-based); with it, it is taken inside ``epoch``
    and ``progress`` (the loop's counters, ``batches_done`` among them) goes into meta.json."""
    root = run_dir / CKPT_DIR
    name = f"epoch_{epoch + 1:04d}" + (f"_step_{step:08d}" if progress else "")
    final, tmp = root / name, root / f".tmp_{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()

    def state() -> None:
        with _without_shared_tensor_notice():
            accelerator.save_state(str(tmp), safe_serialization=True)
        if os.environ.get("SSLVIT_TEST_CHECKPOINT_PAUSE"):  # lets the kill -9 test land inside a write
            time.sleep(float(os.environ["SSLVIT_TEST_CHECKPOINT_PAUSE"]))

    def completed() -> None:  # after every process's part of the state is written
        honour_umask(tmp)  # safetensors writes model.safetensors 0600: colleagues could not read it
        meta = {"epoch": epoch, "step": step, "precision": accelerator.mixed_precision}
        (tmp / "meta.json").write_text(json.dumps({**meta, **({"progress": progress} if progress else {})}))
        _fsync_dir(tmp)

    _written_together(accelerator, state, run_dir, tmp)
    _written_together(accelerator, completed if accelerator.is_main_process else None, run_dir, tmp)
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in complete_checkpoints(run_dir)[keep:] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


try:  # FSDP's sharded state: torch.distributed.checkpoint gathers every process's write error into one
    from torch.distributed.checkpoint.api import CheckpointException  # raised on every process
except ImportError:  # a torch built without torch.distributed
    CheckpointException = RuntimeError
CHECKPOINT_WRITE_ERRORS = (*WRITE_ERRORS, RuntimeError, CheckpointException)  # torch.save's: "unexpected pos"


def _written_together(accelerator, write: Optional[Callable[[], None]], run_dir: Path, tmp: Path) -> None:
    """``write()`` of a part of checkpoint ``tmp`` on this process (None: no part here); if any
    process's part failed, the folder goes and every process raises CheckpointError. A process that
    raised alone also removed the folder under the others' writes still under way."""
    def said(failed: BaseException) -> str:
        why = reason(failed)
        if isinstance(failed, CheckpointException):
            why = f"process {', '.join(map(str, sorted(failed.failures)))} could not write its shard of the state"
        elif isinstance(failed, RuntimeError):  # "unexpected pos 64 vs 0"
            why = "torch.save could not write its file"
        if accelerator.num_processes > 1 and not isinstance(failed, CheckpointException):
            why = f"{why}, on process {accelerator.process_index}"
        latest = latest_checkpoint(run_dir)
        mend = mend_write(failed, run_dir)
        mend = mend[0].upper() + mend[1:]  # after a full stop
        then = (f"the latest checkpoint is still {latest}. {mend}, then --resume" if latest else
                f"no checkpoint was written before it. {mend}, then start the run again")
        return (f"Writing checkpoint '{tmp.name.removeprefix('.tmp_')}' failed ({why}; "
                f"{free_on_its_disk(run_dir)}); {then}.")

    try:
        raised_together(write, CHECKPOINT_WRITE_ERRORS, said, CheckpointError)
    except CheckpointError:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_loadable(ckpt: Path) -> None:
    """Open every pickled file of a checkpoint as accelerate does (``torch.load(weights_only=True)``
    plus numpy arrays for the RNG states), which refuses (never runs) anything else. accelerate
    swallows a failure to load the RNG states, and a resume without them is silently inexact."""
    for f in sorted(Path(ckpt).glob("*.pkl")) + sorted(Path(ckpt).glob("*.bin")):
        try:
            accelerate_load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError...: all mean "not ours or damaged"
            raise CheckpointError(
                f"Checkpoint file '{f}' was not loaded ({e.__class__.__name__}): it is damaged or was not written by "
                "sslvit (a file holding anything but tensors is refused, never executed); delete that checkpoint "
                "folder to resume from the one before, or start a new --out.") from None


def damaged_file(ckpt: Path) -> Optional[str]:
    """The first safetensors file of ``ckpt`` that does not open (truncated, overwritten), with why; or None."""
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as e:  # SafetensorError, OSError: the file cannot be what save_state wrote
            return f"{f.name}: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}"
    return None


def resumable_checkpoint(run_dir: Path, say=print) -> Optional[Path]:
    """The newest complete checkpoint whose weight files open, or None when there is none; each newer
    damaged one is named through ``say``. Raises CheckpointError when every checkpoint is damaged."""
    damaged = []
    for ckpt in complete_checkpoints(run_dir):
        problem = damaged_file(ckpt)
        if problem is None:
            return ckpt
        damaged.append(f"'{ckpt}' ({problem})")
        say(f"warning: checkpoint {damaged[-1]} is damaged; trying the one before it.")
    if damaged:
        raise CheckpointError(f"Every checkpoint in '{Path(run_dir) / CKPT_DIR}' is damaged, the newest "
                              f"{damaged[0]}; start a new --out (the run's config.yaml holds its settings).")
    return None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint folders of ``run_dir`` that have ``meta.json`` (written last), newest (by
    step: a mid-epoch checkpoint is newer than the end of the epoch before) first."""
    metas = {p: read_meta(p) for p in (Path(run_dir) / CKPT_DIR).glob("epoch_*") if (p / "meta.json").is_file()}
    return sorted(metas, key=lambda p: (metas[p]["step"], metas[p]["epoch"]), reverse=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint folder in ``run_dir``, or None."""
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


def read_meta(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / "meta.json").read_text())
