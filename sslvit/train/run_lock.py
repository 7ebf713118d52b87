"""One run per run directory: an advisory lock (``flock``) on ``RUN/.lock``, taken by the main
process for the whole run. The kernel drops it when the process ends, however it ends, so a lock
left by a killed run is never stale; the file names the holder's pid for the message."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from accelerate.utils import broadcast_object_list

from sslvit.runtime.devices import process_state

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None

LOCK_NAME = ".lock"


def _acquire(run_dir: Path):
    """-> the open, locked lock file, or None where the directory cannot be written (the run's own
    writability check then says so); raises FileExistsError naming the holder when it is taken."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_NAME, "a+")
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FileExistsError(f"Run directory '{run_dir}' is in use by another run (process {holder}); wait for it "
                              "to end, or pass --out another directory.") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Hold ``run_dir``'s lock (main process) for the ``with`` body; every process raises the same
    one-sentence FileExistsError when another run holds it."""
    state = process_state()
    handle, problem = None, None
    if state.is_main_process and fcntl is not None:
        try:
            handle = _acquire(Path(run_dir).expanduser())
        except FileExistsError as e:
            problem = str(e)
    if state.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem:
        raise FileExistsError(problem)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing the file drops the lock
