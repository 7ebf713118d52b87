"""iBOT's patch head under a masked-patch count that changes every step: milliseconds per forward +
backward with the head's matmuls on the exact row count (``ROW_BUCKET`` 1, sslvit before 2026-12-05)
and on row counts padded to a multiple of 64 (``ROW_BUCKET`` 64, sslvit's), in one process.

The row counts are the ones iBOT's ``cluttered`` preset draws: the masked patches of 128 global
crops on a 4 x 4 grid (``keyed_crop_masks`` with its keys: ratio 0.3 +- 0.2, half the crops masked),
one count per step, for --steps steps. The head is the preset's (192 -> 512 -> 512 -> 128, BatchNorm,
-> 1024 prototypes) under bf16 autocast where the CPU has native bf16 (as ``train.precision auto``
runs it there), else fp32. On the CPU, oneDNN builds a kernel per matmul shape and keeps 1024
(``ONEDNN_PRIMITIVE_CACHE_CAPACITY``); past that, every new count evicts kernels that are soon built
again. Each phase draws its own counts: --steps steps of warm-up (the cache fills), then --steps
timed.

    python benchmarks/head_shapes.py [--steps 1200] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from flops import print_machine
from sslvit.masking import keyed_crop_masks, scaled_min_block
from sslvit.objectives import dino
from sslvit.objectives.dino import DINOHead


def masked_counts(steps: int, first_key: int) -> list[int]:
    """The masked-patch count of each of ``steps`` steps, as iBOT's cluttered preset draws them."""
    grid, b = (4, 4), 64
    block = scaled_min_block(16.0, grid[0] * grid[1])
    return [int(keyed_crop_masks(first_key + s, slice(0, b), 2, grid, 0.3, 0.2, 0.5, block, 0.3).sum())
            for s in range(steps)]


def phase(head: DINOHead, bucket: int, counts: list[int], bf16: bool) -> list[float]:
    """Seconds of each forward + backward of ``head`` on (n, 192) for n in ``counts``."""
    dino.ROW_BUCKET = bucket
    times = []
    for n in counts:
        x = torch.randn(n, 192, requires_grad=True)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = head(x)
        out.float().sum().backward()
        times.append(time.perf_counter() - t)
    head.zero_grad(set_to_none=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = print_machine()
    torch.manual_seed(0)
    head = DINOHead(192, 1024, hidden_dim=512, bottleneck_dim=128, use_bn=True).train()
    results = {}
    for i, bucket in enumerate((1, 64)):
        counts = masked_counts(2 * args.steps, first_key=i * 2 * args.steps)
        timed = phase(head, bucket, counts, bf16)[args.steps:]
        shapes = {-(-n // bucket) * bucket for n in counts}
        results[bucket] = statistics.mean(timed)
        print(f"ROW_BUCKET {bucket:>2}: {len(set(counts))} row counts -> {len(shapes)} matmul shapes; "
              f"{1000 * results[bucket]:.2f} ms a forward + backward (mean of the last {len(timed)} steps)")
    print(f"exact row counts / padded: {results[1] / results[64]:.2f}x the time "
          f"({'bf16 autocast' if bf16 else 'fp32'})")


if __name__ == "__main__":
    main()
