"""How a command's process ends: as Python ends it, except the processes of a launched run, which
leave without Python's finalization (``ends_process``)."""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., None])


def launched() -> bool:
    """True in a process that ``accelerate launch`` (torchrun) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def another_process() -> bool:
    """True in a launched process other than the main one (rank 0). The main one's progress bar,
    redrawn with ``\\r`` and no newline, may hold the current line of the terminal they share."""
    return launched() and int(os.environ.get("RANK", "0")) != 0


def say_error(sentence: str) -> None:
    """``error: sentence`` on stderr, on a line of its own: a process other than the main one starts
    it with a newline, where it used to land glued to the end of the main process's bar."""
    start = "\n" if another_process() else ""
    print(f"{start}error: {sentence}", file=sys.stderr)


def exit_status(stopped: BaseException | None) -> int:
    """The status Python would exit with after ``stopped`` (None: the function returned), printing
    what Python would print: the traceback of an error, the text of ``SystemExit("...")``."""
    if stopped is None:
        return 0
    if isinstance(stopped, SystemExit):
        if stopped.code is None or isinstance(stopped.code, int):
            return stopped.code or 0
        print(stopped.code, file=sys.stderr)
        return 1
    if another_process():
        print(file=sys.stderr)  # the traceback's first line on its own, not after the main process's bar
    sys.excepthook(type(stopped), stopped, stopped.__traceback__)
    return 1


def ends_process(main: F) -> F:
    """Wraps an entry point's ``main``. In a launched process it ends with ``os._exit`` and the exit
    status Python would give, after flushing the output: Python's finalization aborted such a process
    now and then (std::terminate, SIGABRT, about 1 FSDP fine-tune in 15 on a loaded 2-core CPU). gloo's
    worker thread lets go of a collective's tensors just after the collective returns, which needs the
    GIL; if the main thread has begun finalizing by then, Python ends that thread inside the C++
    destructor, and that aborts. The group cannot be joined beforehand: the process group DDP and FSDP
    wrap outlives ``destroy_process_group`` (torch 2.14). A process of its own (no launcher) ends as
    Python ends it."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        if not launched():
            return main(*args, **kwargs)
        stopped = None
        try:
            main(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - every ending is turned into its exit status below
            stopped = e
        status = exit_status(stopped)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that went away: nothing left to tell it
                pass
        os._exit(status)

    return wrapped  # type: ignore[return-value]
