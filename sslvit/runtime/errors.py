"""The errors a user can cause, which every command ends as one sentence on stderr and exit
code 2 (``USER_ERRORS``), and the three sslvit raises itself."""
from __future__ import annotations

import re
from typing import Optional

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
_SIGNAL_CAUSE = {"Killed": " (most often the system's out-of-memory killer)",
                 "Bus error": " (out of shared memory: give /dev/shm more, e.g. `docker run --shm-size 8g`)"}


def worker_lost(error: BaseException, key: str) -> Optional[str]:
    """The sentence for torch's RuntimeError when a data-loading worker dies (the out-of-memory killer,
    a full /dev/shm), naming the ``key`` that sets the workers; None for any other error."""
    found = _WORKER_LOST.search(str(error)) if isinstance(error, RuntimeError) else None
    if found is None:
        return None
    pids, signal_name = found.group(1), found.group(2)
    how = f"was killed by signal {signal_name.strip()}" if signal_name else "exited unexpectedly"
    return (f"A data-loading worker (pid {pids}) {how}{_SIGNAL_CAUSE.get((signal_name or '').strip(), '')}; lower "
            f"{key} (each worker holds its own copy of the data pipeline) and run again with --resume, which "
            "continues from the latest checkpoint if one was written.")
