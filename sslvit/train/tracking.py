"""The run's one TensorBoard entry, ``RUN/tensorboard``: its curves, and its hyperparameters once.

accelerate's ``init_trackers(config=...)`` stores the hyperparameters with
``SummaryWriter.add_hparams``, which writes them into a second, timestamped run folder (and
``hparams.yml`` into a third), so TensorBoard lists three runs per run. Here the same three
hparams summaries go into the run's own event file instead (``config.yaml`` holds the config).
The log records carry ``step`` and ``epoch``: those are the x-axis, not curves."""
from __future__ import annotations

import threading

AXES = ("step", "epoch")


def tracked_scalars(record: dict) -> dict:
    """The numbers of a log record that are curves: everything numeric but its step and epoch."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in AXES}


def write_hparams(accelerator, hparams: dict) -> None:
    """The run's flat config as TensorBoard hparams, in the run's own event file (main process)."""
    if not accelerator.is_main_process:
        return
    tracker = next((t for t in accelerator.trackers if t.name == "tensorboard"), None)
    if tracker is None:  # no tensorboard installed: accelerate logs nothing, and neither does this
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summaries  # only when a run logs

    writer = tracker.tracker
    for summary in hparams_summaries(hparams, {}):  # experiment, session start, session end
        writer.file_writer.add_summary(summary)
    writer.flush()


def quiet_writer_thread() -> None:
    """TensorBoard writes its events in a thread that, on a full disk, prints its traceback and stops;
    the writer then raises that error on the next event, which the loop warns of once. Only that
    thread's OSError is kept quiet; every other thread's error reaches the previous hook."""
    previous = threading.excepthook
    if getattr(previous, "sslvit_quiet", False):
        return

    def hook(args) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.sslvit_quiet = True
    threading.excepthook = hook
