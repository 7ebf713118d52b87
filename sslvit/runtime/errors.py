"""The errors a user can cause, which every command ends as one sentence on stderr and exit
code 2 (``USER_ERRORS``), and the three sslvit raises itself."""
from __future__ import annotations

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
