"""The one way sslvit builds its ``Accelerator``: for pretraining, fine-tuning and the probes."""
from __future__ import annotations

import platform
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState

from sslvit.runtime.cpu_allocator import keep_freed_memory


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo (or the platform) gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16"))


def cpu_isa() -> str:
    """The vector and matrix extensions that decide the CPU's matmul speed, e.g.
    'AVX2 AVX-512 AVX-512 BF16 AMX-BF16' (Xeon with AMX) or 'AVX2' (an AVX2-only EPYC)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(name for flag, name in ISA_FLAGS if flag in flags) or "no AVX2"


def has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def process_state() -> PartialState:
    """accelerate's process state (devices and the process group) before an ``Accelerator`` exists,
    with freed memory kept for reuse on the CPU (``keep_freed_memory``) from the start."""
    state = PartialState(cpu=not has_accelerator())
    if state.device.type == "cpu":
        keep_freed_memory()
    return state


def build_accelerator(**kwargs) -> Accelerator:
    """``Accelerator(**kwargs)`` on the machine's accelerator, or on the CPU when it has none;
    on the CPU, freed memory is kept for reuse (``keep_freed_memory``: about 25% off a ViT step)."""
    # without cpu=True, a multi-process launch on a machine with no accelerator runs
    # independent copies instead of one gloo process group
    accelerator = Accelerator(cpu=not has_accelerator(), **kwargs)
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    return accelerator
