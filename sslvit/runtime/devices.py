"""The one way sslvit builds its ``Accelerator``: for pretraining, fine-tuning and the probes."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from sslvit.config import ConfigError
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
        shard_on_the_cpu(accelerator)
    return accelerator


def release_accelerator() -> None:
    """Forget a finished run's ``Accelerator`` so that the next run in this process (a run's
    ``start``, then the run) builds its own: accelerate keeps one state a process and refuses a second
    ``Accelerator`` of another precision, and each run picks its own. The processes, their group and
    the device stay (``PartialState``): the pretraining loop ends its trackers, not the group, because
    a group destroyed and made again reads the old one's addresses from the launcher's store.
    accelerate has no public call for this; its tests use these."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    fsdp = PartialState._shared_state.get("distributed_type") == DistributedType.FSDP
    if fsdp and PartialState().device.type == "cpu":
        # shard_on_the_cpu made it FSDP after the launch said MULTI_CPU; it does so again for the next run
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU


def shard_on_the_cpu(accelerator: Accelerator) -> None:
    """An FSDP launch (``distributed_type: FSDP``, ``use_cpu: true``) on the CPU runs FSDP2.

    accelerate 1.15 turns only GPU-like process groups into FSDP: with ``cpu=True`` the state
    stays ``MULTI_CPU`` and the launch's FSDP plugin is dropped without a word, so the run would
    be plain gloo DDP. torch's FSDP2 (``fully_shard``) runs on the CPU with gloo, and so do
    accelerate's FSDP2 ``prepare``, ``save_state``, ``load_state`` and ``get_state_dict``: the
    state is set here as accelerate sets it on a GPU, from the launch's ``FSDP_*`` variables."""
    state = AcceleratorState()
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_asked:
        return
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* as accelerate launch set them
    if plugin.fsdp_version != 2:
        raise ConfigError("FSDP on the CPU needs torch's FSDP2: set fsdp_version: 2 in the launch config's "
                          "fsdp_config (launch/fsdp_cpu_2proc.yaml is one); FSDP1 runs on GPUs only.")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # both singletons hold the type (accelerate copies PartialState's into AcceleratorState)
    PartialState._shared_state["distributed_type"] = AcceleratorState._shared_state["distributed_type"] = \
        DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
