"""Work that the main process does while the other processes wait for its result (a tokenizer
fitted, a checkpoint from elsewhere imported), writes that any process may fail (a checkpoint,
the exported backbone), and how a failure there ends every process."""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

from accelerate.utils import broadcast_object_list, gather_object

from sslvit.runtime.devices import process_state
from sslvit.runtime.errors import MainProcessFailed

T = TypeVar("T")


def main_process_does(work: Callable[[], T], what: str) -> Optional[T]:
    """``work()`` on the main process, while the others wait at a barrier; -> its result there, None
    on the others (once it is done). An error in ``work`` is raised on the main process after the
    barrier, and the others raise one sentence naming ``what``. Raised inside the barrier, it left
    them waiting until gloo broke the connection, and each printed that traceback instead."""
    state = process_state()
    failed, result = None, None
    with state.main_process_first():
        if state.is_main_process:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - raised as it is, below
                failed = e
    failed_on_main = broadcast_object_list([failed is not None])[0]  # as it is, with one process
    if failed is not None:
        raise failed
    if failed_on_main:
        raise MainProcessFailed(f"The main process could not make {what} (its error is above).")
    return result


def raised_together(write: Optional[Callable[[], None]], errors: tuple, said: Callable[[BaseException], str],
                    error: type[Exception]) -> None:
    """``write()`` on this process (None: it has nothing to write), then every process learns whether
    any write raised one of ``errors``; if one did, every process raises ``error`` with the sentence
    ``said`` made of the failed write's error, where it happened. Each process carries the reason: a
    launcher stops the others as soon as one exits, so any of them may be the only one to print. The
    exchange is a barrier too: every write has ended. A process that raised alone left the others at
    their next barrier until gloo broke it."""
    mine = None
    try:
        if write is not None:
            write()
    except errors as e:
        mine = said(e)
    sentences = [s for s in gather_object([mine]) if s is not None]  # [mine] as it is with one process
    if sentences:
        raise error(mine or sentences[0]) from None
