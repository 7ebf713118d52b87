"""SIGTERM and SIGINT end a run at the next optimizer step, with a checkpoint at that step.

SLURM and Kubernetes send SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT.
Either one sets a flag; the training loop finishes the step it is in, writes a checkpoint at
that step (``--resume`` continues exactly from it, mid-epoch) and exits with 128 + the signal's
number. The flag is agreed on by all processes at each optimizer step, so a signal that reaches
one process stops them all at the same step.

A launcher that dies must not leave its trainer running unseen: ``follow_launcher`` asks the
kernel (Linux ``PR_SET_PDEATHSIG``) for a SIGTERM when the process that launched it ends.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# a launcher forwards the terminal's Ctrl-C to its trainers, which got it from the terminal too:
# two SIGINTs this close together are one press
SAME_PRESS_S = 1.0
PR_SET_PDEATHSIG = 1
LAUNCHERS = ("accelerate", "torch.distributed.run", "torchrun")


class RunStopped(Exception):
    """The run was stopped by a signal; ``checkpoint`` is what ``--resume`` continues from."""

    def __init__(self, message: str, signum: int, checkpoint: Optional[Path]):
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint
        self.announced = False  # printed already (by the main process, before the others exit)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _say(text: str) -> None:
    """One line on stderr, from the main process only (a launcher gives every process the signal)."""
    if os.environ.get("RANK", "0") == "0":
        # os.write, not print: a handler may run while print holds stderr's lock
        os.write(2, (text + "\n").encode())


class StopRequest:
    """Handlers for SIGTERM and SIGINT while the ``with`` body runs (main thread only)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._first_at = 0.0
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                # a signal ignored from the start stays ignored: `cmd &` in a script and nohup
                # mean Ctrl-C in that terminal is not for this run
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            _say(f"\n{signal.Signals(signum).name} received: stopping after this step with a checkpoint"
                 + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""))
        elif signum == signal.SIGINT and now - self._first_at > SAME_PRESS_S:
            # checkpoints are renamed into place when complete, so stopping mid-write loses nothing
            _say("Second Ctrl-C: stopping now, without a checkpoint of this step; --resume continues from the "
                 "latest complete one (before the first, it starts the run again).")
            os._exit(128 + signum)

    def agreed(self, accelerator) -> Optional[int]:
        """The signal any process received (the same answer on every process), or None."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([float(self.signum or 0)], device=accelerator.device)
        return int(accelerator.gather(flag).max().item()) or None


def _parent_is_launcher() -> bool:
    try:
        cmdline = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(name in cmdline for name in LAUNCHERS)


def follow_launcher() -> bool:
    """When launched by ``accelerate launch`` or torchrun, have the kernel send SIGTERM to this
    process when the launcher ends (a SIGTERM to the launcher alone would otherwise leave the
    trainer running, unseen, to the end of the run). -> whether it was set (Linux only)."""
    if not Path("/proc").is_dir() or not _parent_is_launcher():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if not _parent_is_launcher():  # the launcher ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
