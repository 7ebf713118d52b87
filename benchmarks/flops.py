"""Shared by the step benchmarks: the matmul FLOP model of ViT blocks and stems, the
measured matmul peak of this machine, the round-robin step timer, and its one-process-per-
configuration form (``StepWorkers`` / ``serve_steps``). Run the benchmarks from the repo root
(``python benchmarks/x.py``): this folder is then first on ``sys.path``."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import torch

from sslvit.runtime.devices import cpu_isa, cpu_model
from sslvit.train.precision import resolve_precision, torch_native_bf16


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


class StepWorkers:
    """Configurations that need a process of their own (process-wide settings such as the CPU
    allocator differ between them), timed in lockstep: the parent asks one worker at a time for
    one step, round-robin, so only one computes at any moment and machine noise hits each alike.

    Each worker is ``python <script> <args...> --worker NAME``; the script builds NAME's step and
    calls ``serve_steps(step)``. -> ``time(n, warmup)``: name -> [seconds, minor page faults] per timed step."""

    def __init__(self, script: str, names: list[str], args: list[str]):
        self.names = names
        self.procs = {}
        for name in names:  # built one after the other: model building is not timed
            p = subprocess.Popen([sys.executable, script, *args, "--worker", name], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, bufsize=1)
            self.procs[name] = p
            self._reply(name)  # "ready"

    def _reply(self, name: str) -> list[str]:
        for line in self.procs[name].stdout:
            if line.startswith("@@"):
                return line[2:].split()
        raise RuntimeError(f"benchmark worker '{name}' exited (exit code {self.procs[name].wait()})")

    def ask(self, name: str, command: str) -> list[str]:
        self.procs[name].stdin.write(command + "\n")
        return self._reply(name)

    def time(self, n: int, warmup: int) -> dict[str, list[list[float]]]:
        for _ in range(warmup):
            for name in self.names:
                self.ask(name, "step")
        out = {name: [] for name in self.names}
        for _ in range(n):
            for name in self.names:
                out[name].append([float(v) for v in self.ask(name, "step")])
        print("load average after timing: %.2f %.2f %.2f" % os.getloadavg())
        return out

    def close(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                p.stdin.write("quit\n")
                p.stdin.flush()
                p.wait()


def serve_steps(step) -> None:
    """Worker side of ``StepWorkers``: answer each ``step`` line with the step's seconds and its
    minor page faults, until ``quit``. Protocol lines start with '@@'; anything else on stdout is
    ignored by the parent."""
    print("@@ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            return
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        step()
        dt = time.perf_counter() - t
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(f"@@{dt:.6f} {faults}", flush=True)


def print_machine(extra: str = "") -> bool:
    """The machine the figures belong to: CPU model, ISA, torch, threads, native bf16; -> native bf16."""
    native = torch_native_bf16()
    print(f"CPU: {cpu_model()} | ISA: {cpu_isa()} | native bf16 (oneDNN): {native} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()}" + (f" | {extra}" if extra else ""))
    print("load average at start (other processes skew timings): %.2f %.2f %.2f" % os.getloadavg())
    return native


def default_precision(fp32_s: float, bf16_s: float | None) -> str:
    """What ``train.precision auto`` picks for a step timed at these seconds (the training loop's
    own rule, ``resolve_precision``): 'bf16' or 'fp32'."""
    if bf16_s is None:
        return "fp32"
    choice = resolve_precision("auto", lambda: {"fp32": fp32_s, "bf16": bf16_s})
    return choice.name


def peak_fractions(flop_per_s: float, peaks: dict[str, float]) -> str:
    return ", ".join(f"{flop_per_s / v:.0%} of {k} peak" for k, v in peaks.items())
