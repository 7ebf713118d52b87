"""The run's one TensorBoard entry, ``RUN/tensorboard``: its curves, and its hyperparameters once.

accelerate's ``init_trackers(config=...)`` stores the hyperparameters with
``SummaryWriter.add_hparams``, which writes them into a second, timestamped run folder (and
``hparams.yml`` into a third), so TensorBoard lists three runs per run. Here the same three
hparams summaries go into the run's own event file instead (``config.yaml`` holds the config).
The log records carry ``step`` and ``epoch``: those are the x-axis, not curves."""
from __future__ import annotations

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
