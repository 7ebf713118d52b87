"""What a folder of camera photos costs a run to read, against the same photos written as shards
with ``--max-side``: decoded + augmented images per second, one process, one thread. The folder is
read twice: as a run reads it (a JPEG decoded at the smallest DCT scale whose short side is at least
4 x ``--img``, ``sslvit.data.decode.draft``) and decoded whole, as it was read before 2026-12-07.

Setup: ``--n`` photo-sized JPEGs (``--side`` px short side, 4:3, quality 90) made from
scikit-learn's two real sample photos (``china.jpg``, ``flower.jpg``, 427 x 640), upscaled and
cropped at seeded places, in two class folders; then ``python -m sslvit.data.shards`` of that
folder with ``--max-side`` (default 4 x ``--img``, what the recipe's note proposes). Both are read
as pretraining reads them (``build_dataset``: the folder's files, the shards' stream) through
MAE's transform at ``--img`` px (RandomResizedCrop from 0.2 of the area + flip + normalise), one
pass each, alternated ``--rounds`` times so the machine's noise hits both alike; the medians are
printed, and their ratio.

    python benchmarks/photo_read.py [--n 48 --side 3024 --img 64 --rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from flops import print_machine  # benchmarks/flops.py
from sslvit.data.dataset import build_dataset, iterate
from sslvit.data.shards import write_shards
from sslvit.data.transforms import mae_train_transform


def make_photos(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    sources = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    for i in range(n):
        big = sources[i % 2].resize((side * 4 // 3 * 2, side * 2), Image.BICUBIC)  # upscaled 2x past the photo
        x, y = (int(v) for v in rng.integers(0, [big.width - side * 4 // 3, big.height - side]))
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        big.crop((x, y, x + side * 4 // 3, y + side)).save(root / f"class{i % 2}" / f"{i:04d}.jpg", quality=90)


def images_per_s(data: str, img: int, whole: bool = False) -> float:
    dataset = build_dataset(data, "train", img, transform=mae_train_transform(img))
    if whole:  # before 2026-12-07: every JPEG decoded at its full size
        dataset.read_for = None
    t0 = time.perf_counter()
    n = sum(1 for _ in iterate(dataset))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--side", type=int, default=3024, help="the photos' short side (a 12-megapixel phone: 3024)")
    ap.add_argument("--img", type=int, default=64, help="the run's image size (the small-data recipe's 64 px)")
    ap.add_argument("--max-side", type=int, default=None, help="the shards' short side (default 4 x --img)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print_machine(f"{args.n} photos at {args.side * 4 // 3} x {args.side} px, read for {args.img} px crops")
    max_side = args.max_side or 4 * args.img
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "photos", Path(tmp) / "shards"
        make_photos(folder, args.n, args.side)
        t0 = time.perf_counter()
        write_shards(folder, shards, val_fraction=0, max_side=max_side, progress=False)
        write_s = time.perf_counter() - t0
        mb = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6 for p in (folder, shards)}
        rates = {"whole": [], "folder": [], "shards": []}
        for _ in range(args.rounds):
            rates["whole"].append(images_per_s(str(folder), args.img, whole=True))
            rates["folder"].append(images_per_s(str(folder), args.img))
            rates["shards"].append(images_per_s(str(shards), args.img))
    rate = {k: statistics.median(v) for k, v in rates.items()}
    rounds = {k: ", ".join(f"{r:.1f}" for r in v) for k, v in rates.items()}
    print(f"folder of photos ({mb[folder]:.0f} MB), each JPEG decoded whole: {rate['whole']:.1f} images/s  "
          f"(rounds: {rounds['whole']})")
    print(f"the same folder as a run reads it (decoded at a DCT scale >= {4 * args.img} px): {rate['folder']:.1f} "
          f"images/s  (rounds: {rounds['folder']})")
    print(f"shards, --max-side {max_side} ({mb[shards]:.1f} MB, written in {write_s:.1f} s, "
          f"{args.n / write_s:.1f} images/s): {rate['shards']:.1f} images/s  (rounds: {rounds['shards']})")
    print(f"ratios: the folder as read {rate['folder'] / rate['whole']:.1f}x decoded whole; the shards "
          f"{rate['shards'] / rate['folder']:.1f}x the folder as read, {rate['shards'] / rate['whole']:.1f}x whole")


if __name__ == "__main__":
    main()
