"""The one way sslvit builds its ``Accelerator``: for pretraining, fine-tuning and the probes."""
from __future__ import annotations

import torch
from accelerate import Accelerator

from sslvit.train.cpu_allocator import keep_freed_memory


def has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def build_accelerator(**kwargs) -> Accelerator:
    """``Accelerator(**kwargs)`` on the machine's accelerator, or on the CPU when it has none;
    on the CPU, freed memory is kept for reuse (``keep_freed_memory``: about 25% off a ViT step)."""
    # without cpu=True, a multi-process launch on a machine with no accelerator runs
    # independent copies instead of one gloo process group
    accelerator = Accelerator(cpu=not has_accelerator(), **kwargs)
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    return accelerator
