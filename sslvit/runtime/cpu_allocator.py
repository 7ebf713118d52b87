"""Keep freed memory in the process on CPU, so a training step does not page-fault its way
through gigabytes of fresh zeroed pages.

PyTorch's CPU tensors come from glibc ``malloc``. glibc serves blocks above its mmap threshold
(dynamic, at most 32 MiB) with a fresh ``mmap`` and returns them with ``munmap`` on free, and it
trims the heap top back to the kernel once more than the trim threshold is free. A ViT training
step allocates and frees the same large activations every step (ViT-S + MAE decoder at batch 32:
about 500,000 minor page faults, 2 GB of pages zeroed by the kernel, per step), so every step pays
for them again. Raising both thresholds keeps those blocks in the heap for reuse: the same step
then takes about 25% less time on this project's 2-core CPU (``benchmarks/mae_step.py``). The
process keeps its peak memory instead of handing it back between steps, which a training
process reaches every step anyway.

Other allocators (jemalloc, tcmalloc via ``LD_PRELOAD``) cache on their own; glibc is detected
and anything else is left alone. GPU memory has its own caching allocator and is unaffected.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# mallopt takes a C int, so 2 GiB - 1 is the most either can be
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the heap top is given back only when 2 GiB of it are free

_tuned: bool | None = None


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return the
    first answer). -> True if applied. ``SSLVIT_MALLOC_TUNING=0`` turns it off."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("SSLVIT_MALLOC_TUNING", "1").lower() in ("0", "false", "no", "off"):
        return _tuned
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return _tuned
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    # each returns 1 on success; with only one of them applied most page faults remain
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _tuned = mmap_ok and trim_ok
    return _tuned
