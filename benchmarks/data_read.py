"""Decoded + augmented images/s from webdataset shards vs the same images as an image folder,
and the shard writer's images/s.

Setup: ``--n`` small JPEGs (``--px`` px, quality 90, random smooth colour fields in 10 class
folders) written to a temporary folder, then to shards by ``sslvit.data.shards``; both readers
use MAE's transform (RandomResizedCrop to ``--img`` + flip + normalize), ``--workers`` data-loader
workers and batch ``--batch``:

  folder:  ``DataLoader(ImageDataset, shuffle=True, num_workers)``, what pretraining uses for folders;
  shards:  ``StreamLoader(ShardDataset)``, what pretraining uses for shards.

One epoch of each, alternated ``--rounds`` times, so the machine's noise hits both alike, in two
settings:

  warm:  the files sit in the page cache: the per-image CPU cost of the two paths only
         (an open per file vs Python's tarfile parsing a header per member);
  cold:  before each epoch the reader's files are evicted from the page cache
         (``posix_fadvise(DONTNEED)``), so every image comes from the disk, as it does for a
         data set larger than memory, the case shards are for.

Then, in this process alone (1 thread, warm cache, best of 3), what one image costs in each
stage: reading its file, reading its tar members, decoding, the MAE transform, and the shard
stream without the transform (tar + key grouping + decode + shuffle buffer). From these it
prints the most any reader could gain over the folder here: (read file + decode + transform) /
(decode + transform), a reader that costs nothing.

    python benchmarks/data_read.py [--n 16000 --px 64 --img 32 --workers 2 --rounds 2]
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flops import print_machine  # benchmarks/flops.py
from sslvit.data.dataset import build_dataset
from sslvit.data.shard_reader import build_shard_dataset, tar_members
from sslvit.data.shards import write_shards
from sslvit.data.stream_loader import StreamLoader
from sslvit.data.transforms import mae_train_transform


def make_jpegs(root: Path, n: int, px: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth fields compress like photos
        Image.fromarray(small).resize((px, px), Image.BICUBIC).save(d / f"{i:06d}.jpg", quality=90)


def evict(paths) -> None:
    """Drop the files' pages from the page cache (no root needed for files we wrote)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def epoch_rate(loader) -> float:
    t = time.perf_counter()
    n = sum(batch[0].shape[0] for batch in loader)
    return n / (time.perf_counter() - t)


def stage_costs(files: list[Path], tars: list[Path], shards, tf) -> dict[str, float]:
    """Microseconds per image of each stage, one process (best of 3 passes)."""
    blobs: list[bytes] = []

    def read_files():
        blobs.clear()
        for p in files:
            with open(p, "rb") as fh:
                blobs.append(fh.read())

    def read_tars():
        for p in tars:
            with open(p, "rb") as fh:
                for _ in tar_members(fh):
                    pass

    def decode():
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.convert("RGB")

    read_files()
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs[:2000]]

    def transform():
        for im in images:
            tf(im)

    def shard_stream():
        for _ in shards:
            pass

    stages = {"read file": (read_files, len(files)), "read tar members": (read_tars, len(files)),
              "decode": (decode, len(files)), "MAE transform": (transform, len(images)),
              "shard stream (no transform)": (shard_stream, len(files))}
    costs = {}
    for name, (fn, n) in stages.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        costs[name] = best / n * 1e6
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16000)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--img", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-count", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "folder", Path(tmp) / "shards"
        make_jpegs(src, args.n, args.px)
        size = sum(p.stat().st_size for p in src.rglob("*.jpg")) / args.n
        t = time.perf_counter()
        write_shards(src, out, val_fraction=0, max_count=args.max_count, workers=args.workers, progress=False)
        write_rate = args.n / (time.perf_counter() - t)
        tf = mae_train_transform(args.img)
        folder = build_dataset(str(src), "all", args.img, transform=tf)
        shards = build_shard_dataset(str(out), "train", tf, shuffle=True, markers=True)
        loaders = {
            "folder": DataLoader(folder, batch_size=args.batch, shuffle=True, drop_last=True,
                                 num_workers=args.workers),
            "shards": StreamLoader(shards, args.batch, 1, args.workers),
        }
        print(f"{args.n} JPEGs of {args.px} px ({size / 1024:.1f} KiB each) -> MAE transform at {args.img} px, "
              f"{args.workers} workers, batch {args.batch}, {len(shards.urls)} shards; {os.cpu_count()} CPUs")
        files = {"folder": list(src.rglob("*.jpg")), "shards": list(out.glob("*.tar"))}
        rates = {(cache, k): [] for cache in ("warm", "cold") for k in loaders}
        for r in range(args.rounds + 1):  # round 0 warms the workers' imports
            for cache in ("warm", "cold"):
                for name, loader in loaders.items():
                    if hasattr(loader, "set_epoch"):
                        loader.set_epoch(r)
                    if cache == "cold":
                        evict(files[name])
                    rate = epoch_rate(loader)
                    if r:
                        rates[(cache, name)].append(rate)
        print("load average after timing: %.2f %.2f %.2f" % os.getloadavg())
        shards.transform = None
        costs = stage_costs(files["folder"], files["shards"], shards, tf)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    for (cache, name), v in rates.items():
        print(f"  {cache} {name:7s} {med[(cache, name)]:8.0f} images/s   (rounds: {', '.join(f'{x:.0f}' for x in v)})")
    for cache in ("warm", "cold"):
        print(f"{cache}: shards / folder {med[(cache, 'shards')] / med[(cache, 'folder')]:.2f}x   (goal >= 1.5x)")
    print(f"writer: {write_rate:.0f} images/s with {args.workers} processes")
    print("one image, one process (us): " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))
    work = costs["decode"] + costs["MAE transform"]
    print(f"ceiling: a reader that costs nothing is at most {(costs['read file'] + work) / work:.2f}x faster than the "
          f"folder here; the shard stream's own cost is "
          f"{costs['shard stream (no transform)'] - costs['decode']:.1f} us "
          f"against the folder's {costs['read file']:.1f} us")


if __name__ == "__main__":
    main()
