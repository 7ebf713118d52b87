"""Shared by the step benchmarks: the matmul FLOP model of ViT blocks and stems, the
measured matmul peak of this machine, and the round-robin step timer. Run the benchmarks from the repo root
(``python benchmarks/x.py``): this folder is then first on ``sys.path``."""
from __future__ import annotations

import os
import time

import torch


def block_macs(T: int, dim: int) -> int:
    """One transformer block over T tokens: qkv + QK^T + AV + proj + MLP (ratio 4)."""
    return T * dim * 3 * dim + 2 * T * T * dim + T * dim * dim + 2 * T * dim * 4 * dim


def stem_macs(stem: str, dim: int, C: int = 3) -> int:
    """One 16x16 patch: linear = C*P*P*D; hMLP (kernel == stride convs, h = D/4) =
    16*(C*4*4)*h + 4*(4h)*h + 1*(4h)*D."""
    if stem == "linear":
        return C * 16 * 16 * dim
    h = dim // 4
    return 16 * (C * 4 * 4) * h + 4 * (4 * h) * h + (4 * h) * dim


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def time_round_robin(steps: dict, n: int, warmup: int) -> dict[str, list[float]]:
    """Time each ``steps[name]()`` ``n`` times, interleaved (after ``warmup`` untimed rounds), so
    the noise of a shared machine hits every configuration alike. -> name -> seconds per step."""
    times = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in range(n):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    print("load average after timing: %.2f %.2f %.2f" % os.getloadavg())
    return times
