"""The errors a user can cause, which every command ends as one sentence on stderr and exit
code 2 (``USER_ERRORS``), and the three sslvit raises itself."""
from __future__ import annotations

import re
from typing import Optional

import torch

from sslvit.config import ConfigError
from sslvit.data.folder import DataError
from sslvit.files import OutputError
from sslvit.models.checkpoint_layouts import WeightsError


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the one that is still the latest."""


class TrainingDiverged(RuntimeError):
    """The losses or gradients stayed non-finite, or no step was ever applied."""


class MainProcessFailed(RuntimeError):
    """The main process failed at work the others wait for; its own error says why."""


USER_ERRORS = (ConfigError, DataError, WeightsError, FileNotFoundError, FileExistsError, PermissionError, ValueError,
               TrainingDiverged, CheckpointError, MainProcessFailed, OutputError)


_WORKER_LOST = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (?:is killed by signal: ([A-Za-z ]+)|exited "
                          r"unexpectedly)")
_PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|remote process exited")
_SIGNAL_CAUSE = {"Killed": " (most often the system's out-of-memory killer)",
                 "Bus error": " (out of shared memory: give /dev/shm more, e.g. `docker run --shm-size 8g`)"}


def explained(error: BaseException, batch_key: str, workers_key: str, then: str) -> Optional[str]:
    """The sentence for a RuntimeError the machine caused rather than the code: the accelerator's
    memory ran out (``batch_key`` lowers it), a data-loading worker died (``workers_key``), or another
    process of the run died, each followed by ``then`` (how to go on); None for any other error, whose
    traceback is the bug report."""
    if isinstance(error, torch.OutOfMemoryError):
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else "out of memory"
        return (f"The accelerator ran out of memory ({first}); lower {batch_key}"
                f"{' or set --model.grad_checkpointing true' if batch_key.startswith('--train.') else ''} and {then}.")
    return worker_lost(error, workers_key, then) or peer_lost(error, then)


def peer_lost(error: BaseException, then: str) -> Optional[str]:
    """The sentence for the RuntimeError a collective raises when another process of the run has died
    (gloo: "Connection closed by peer"; NCCL: "remote process exited"), then ``then``; None for any
    other error. The cause is that process's, so this one's traceback pointed at the wrong line."""
    found = _PEER_LOST.search(str(error)) if isinstance(error, RuntimeError) else None
    if found is None:
        return None
    return (f"Another process of the run ended first, so this one cannot go on ({found.group(0)}); that "
            f"process's own error line, or the launcher's report of its exit code, says why. Mend that and {then}.")


def worker_lost(error: BaseException, key: str, then: str) -> Optional[str]:
    """The sentence for torch's RuntimeError when a data-loading worker dies (the out-of-memory killer,
    a full /dev/shm), naming the ``key`` that sets the workers, then ``then``; None for any other error."""
    found = _WORKER_LOST.search(str(error)) if isinstance(error, RuntimeError) else None
    if found is None:
        return None
    pids, signal_name = found.group(1), found.group(2)
    how = f"was killed by signal {signal_name.strip()}" if signal_name else "exited unexpectedly"
    return (f"A data-loading worker (pid {pids}) {how}{_SIGNAL_CAUSE.get((signal_name or '').strip(), '')}; lower "
            f"{key} (each worker holds its own copy of the data pipeline) and {then}.")
