"""Which precision a run trains in.

``train.precision``: ``auto``, ``fp32`` (or ``no``, accelerate's name for it), ``bf16`` or ``fp16``.
``auto`` is bf16 on a CUDA GPU (fp16 where it lacks bf16); fp32 on a CPU without native bf16
(emulated bf16 is many times slower); and on a CPU with native bf16 (AVX-512 BF16 / AMX) it is
decided by timing the run's own forward + backward in both precisions before training, as
cuDNN's benchmark mode does: bf16 wins big matmuls (ViT-S/16 MAE 1.5-1.9x on a Xeon with AMX) and
loses small ones (the 16 px ViT-Ti/4 demo model runs at 0.47-0.52x: converting costs more than it
saves).

The timings are cached per CPU model, torch version, thread count, objective and batch shape in
``precision.json`` in sslvit's cache folder (``files.cache_folder``): a rerun of the same setup times
nothing. ``SSLVIT_CPU_BF16=0`` makes ``auto`` resolve as on a CPU without native bf16 (fp32, nothing
timed), so one machine can run the suite both ways.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from sslvit.files import cache_folder, write_json_atomic
from sslvit.runtime.devices import cpu_model, has_accelerator

PRECISIONS = ("auto", "fp32", "no", "bf16", "fp16")
BF16_MARGIN = 0.9  # bf16 is chosen only when its step takes < 90% of fp32's: fp32 is the more exact
TIMED_PASSES = 2  # per precision at most, after one warm-up pass each; the fastest counts
CLEAR_RATIO = 1.5  # one timed pass each suffices when one precision is this much faster


def accelerate_name(precision: str) -> str:
    """sslvit's name -> accelerate's ``mixed_precision`` (``fp32`` -> ``no``)."""
    return "no" if precision in ("fp32", "no") else precision


def torch_native_bf16() -> bool:
    """What the hardware says (oneDNN has native bf16 kernels), whatever ``SSLVIT_CPU_BF16`` is."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_native_bf16() -> bool:
    """``torch_native_bf16()``, unless ``SSLVIT_CPU_BF16=0`` asks to act as on a CPU without it."""
    if os.environ.get("SSLVIT_CPU_BF16", "").strip().lower() in ("0", "no", "off", "false"):
        return False
    return torch_native_bf16()


def accelerator_kind() -> str:
    """Where the run trains: 'cpu' (no accelerator, or accelerate told to use the CPU), 'cuda' or 'other'."""
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes") or not has_accelerator():
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "other"


@dataclass
class PrecisionChoice:
    precision: str  # accelerate's name: no | bf16 | fp16
    reason: str  # one line for the run's first lines
    timings: dict = field(default_factory=dict)  # {"fp32": s, "bf16": s} when measured
    cost_s: float = 0.0  # wall time the choice took (reading the batch and timing both)

    @property
    def name(self) -> str:
        return "fp32" if self.precision == "no" else self.precision


def resolve_precision(requested: str, time_step: Optional[Callable[[], dict]] = None) -> PrecisionChoice:
    """``train.precision`` -> the precision to train in. An explicit value (or accelerate's
    ``--mixed_precision``) is final; ``auto`` on a CPU with native bf16 calls ``time_step()``
    (-> seconds per forward + backward, {"fp32": s, "bf16": s}) when given, else picks bf16."""
    if requested != "auto":
        return PrecisionChoice(accelerate_name(requested), "as configured")
    env = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if env != "no":
        return PrecisionChoice(env, "from accelerate's --mixed_precision")
    kind = accelerator_kind()
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "GPU with bf16")
        return PrecisionChoice("fp16", "GPU without bf16 (loss scaling on)")
    if kind == "other":
        return PrecisionChoice("no", "an accelerator other than CUDA: fp32 (set train.precision bf16 to try it)")
    if not cpu_has_native_bf16():
        why = "SSLVIT_CPU_BF16=0" if torch_native_bf16() else "no native bf16 on this CPU"
        return PrecisionChoice("no", why)
    if time_step is None:
        return PrecisionChoice("bf16", "native bf16 on this CPU")
    t0 = time.perf_counter()
    t = time_step()
    cost = time.perf_counter() - t0
    faster = t["bf16"] < BF16_MARGIN * t["fp32"]
    speed = t["fp32"] / t["bf16"]
    cached = t.pop("cached", False)
    return PrecisionChoice("bf16" if faster else "no",
                           f"measured on this CPU: bf16 {speed:.2f}x the speed of fp32 "
                           f"(fp32 {t['fp32']:.3f} s, bf16 {t['bf16']:.3f} s a step"
                           f"{'; cached from an earlier run' if cached else ''})", t, cost)


def timing_batch(train_set, batch_size: int, collate_fn: Optional[Callable] = None):
    """The first ``batch_size`` training items (a map-style set's first indices, a stream's first
    good samples), collated as the loader collates them: what ``time_step_precisions`` runs on."""
    collate = collate_fn or torch.utils.data.default_collate
    with torch.random.fork_rng(devices=[]):
        # not hasattr(__getitem__): torch's IterableDataset inherits one that raises (the shard stream)
        if not isinstance(train_set, torch.utils.data.IterableDataset):
            items = [train_set[i] for i in range(batch_size)]
        else:
            items = []
            for item in train_set:
                if isinstance(item, tuple):
                    items.append(item)
                if len(items) == batch_size:
                    break
    return collate(items)[0]


def time_step_precisions(objective: torch.nn.Module, batch) -> dict:
    """Seconds of one forward + backward of ``objective(batch)`` in fp32 and in bf16 autocast on
    the CPU: a copy of the objective runs them (its state, hooks and the RNG stay untouched),
    each precision warmed up once, then timed alternately: once when one is ``CLEAR_RATIO`` times
    faster than the other, else ``TIMED_PASSES`` times (the fastest counts)."""
    probe = copy.deepcopy(objective).train()
    params = [p for p in probe.parameters() if p.requires_grad]

    def one(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = probe(batch)["loss"]
        loss.backward()
        for p in params:
            p.grad = None
        return time.perf_counter() - t0

    with torch.random.fork_rng(devices=[]):
        one(False), one(True)
        times = {"fp32": [], "bf16": []}
        for _ in range(TIMED_PASSES):
            times["fp32"].append(one(False))
            times["bf16"].append(one(True))
            ratio = times["fp32"][-1] / times["bf16"][-1]
            if not 1 / CLEAR_RATIO < ratio < CLEAR_RATIO:
                break
    del probe
    return {k: min(v) for k, v in times.items()}


def cache_file() -> Path:
    return cache_folder() / "precision.json"


def batch_shapes(batch):
    """A batch's tensor shapes in its own nesting: a tensor, or lists, tuples and dicts of them (a
    composite objective's batch is {objective: its batch})."""
    if isinstance(batch, torch.Tensor):
        return list(batch.shape)
    if isinstance(batch, dict):
        return {k: batch_shapes(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [batch_shapes(x) for x in batch]
    return type(batch).__name__


def step_key(objective: torch.nn.Module, batch) -> str:
    """What decides the step's kernels: the CPU, torch, threads, the attention kernel rule, the
    objective and its shapes."""
    from sslvit.models.attention import RULE  # timm: imported when a step is timed, not for --help

    # a lone tensor is listed, as the key always wrote it, so that earlier cached timings still match
    shapes = batch_shapes(batch if isinstance(batch, (list, tuple)) else [batch])
    params = sum(p.numel() for p in objective.parameters())
    return (f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {RULE} | "
            f"{type(objective).__name__} {params} parameters | batch {shapes}")


def measure_step(objective: torch.nn.Module, train_set, batch_size: int, collate_fn=None) -> dict:
    """``time_step_precisions`` on the run's first batch, or its cached result for the same setup
    (-> {"fp32": s, "bf16": s}, plus "cached": True when it came from the cache)."""
    batch = timing_batch(train_set, batch_size, collate_fn)
    key, path = step_key(objective, batch), cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), dict):
        return {**cache[key], "cached": True}
    timings = time_step_precisions(objective, batch)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic({**cache, key: timings}, path)
    except OSError:  # a read-only home only costs the next run the timing again
        pass
    return timings
