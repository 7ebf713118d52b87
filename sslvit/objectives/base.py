"""The seam between an objective and the one training loop.

An objective subclasses ``Objective`` and writes ``forward``; every hook has a no-op default,
so an objective overrides only what it needs. The loop calls the hooks on every process, with
a ``StepInfo`` saying where it is:

    on_epoch_start(epoch)            before an epoch's first batch (not on a mid-epoch resume)
    before_micro_batch(info)         before every forward: per micro-batch
    forward(batch) -> dict           {"loss": scalar, any other scalars to log}
    before_optimizer_step(info)      after backward and clipping of an applied step
    after_optimizer_step(info)       after an applied optimizer step (an EMA teacher, a center)
    check_health(record) -> [str]    on every logged record: warnings to show
    pictures(imgs) -> columns        a picture grid's columns (or (columns, normalized))
    no_weight_decay() -> {names}     parameters AdamW must not decay
    exported_backbone() -> SSLViT    what is exported and probed (default: ``self.backbone``)
    init_targets() -> {group: module} what ``--init`` loads a file's groups into (default: the backbone;
                                     names as in ``sslvit.models.checkpoint_layouts``)

A micro-batch is one forward and backward; with ``train.accum_steps`` A, A micro-batches make
one optimizer step. A step whose loss or gradients are not finite is skipped: it gets
``before_micro_batch`` calls but no ``before_optimizer_step`` / ``after_optimizer_step``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class StepInfo:
    """Where the loop is. ``rows`` and ``global_size`` place this micro-batch in the optimizer
    step's global batch (micro-batch-major, then process, as accelerate deals batches), so draws
    keyed by them (``key``, rows) do not depend on how the batch is split over processes."""
    step: int  # index of the optimizer step being made (0-based: steps done before it)
    micro: int  # micro-batch within the step, 0 .. accum_steps - 1
    epoch: int  # 0-based
    total_steps: int
    steps_per_epoch: int
    key: int  # a seed for this optimizer step: seed * 2**32 + step
    rows: slice  # this micro-batch's rows in the step's global batch
    global_size: int  # images in the step's global batch (processes x micro-batches x batch)


class Objective(nn.Module):
    """Base of every objective: ``forward(batch) -> dict`` and the no-op hooks above."""

    def forward(self, batch) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define forward(batch) -> dict with a 'loss'")

    def exported_backbone(self) -> nn.Module:
        return self.backbone

    def no_weight_decay(self) -> set[str]:
        return set()

    def init_targets(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone}

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def before_micro_batch(self, info: StepInfo) -> None:
        pass

    def before_optimizer_step(self, info: StepInfo) -> None:
        pass

    def after_optimizer_step(self, info: StepInfo) -> None:
        pass

    def check_health(self, record: dict) -> list[str]:
        return []

    def pictures(self, imgs):
        return None
