"""Is BEiT's block masking ever the data loader's bottleneck? Masks/s of ``block_masking`` (14x14
grid, 75 masked, BEiT's settings) against images/s of what every loader worker does per image
anyway: decode a JPEG photo and apply the MAE/BEiT training transform at 224 px
(RandomResizedCrop + flip + to-tensor + normalise), in the same run, single-threaded, each
repeated for ``--seconds`` (best of ``--reps`` rounds, interleaved so load hits both alike).

The photo is scikit-learn's ``china.jpg`` (427 x 640, offline), re-encoded as JPEG quality 90.
Masks are drawn in batches of ``--batch`` (one ``block_masking`` call per batch, as the
collate does). Run from the repo root:

    .venv/bin/python benchmarks/block_mask.py [--seconds 2 --reps 3 --batch 32]
"""
from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from flops import print_machine  # benchmarks/flops.py
from sslvit.data.transforms import mae_train_transform
from sslvit.masking import block_masking


def rate(fn, per_call: int, seconds: float) -> float:
    """Items/s of ``fn`` (``per_call`` items per call) over about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += per_call
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker is one thread
    print_machine()
    buf = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    transform = mae_train_transform(224)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, 1 thread, load average at start: %.2f %.2f %.2f" % os.getloadavg())

    def masks():
        block_masking(args.batch, (14, 14), 75, min_block=16, generator=rng)

    def image():
        transform(Image.open(io.BytesIO(jpeg)).convert("RGB"))

    mask_rates, image_rates = [], []
    for _ in range(args.reps):
        mask_rates.append(rate(masks, args.batch, args.seconds))
        image_rates.append(rate(image, 1, args.seconds))
    m, i = max(mask_rates), max(image_rates)
    print(f"block_masking 14x14, 75 masked, batches of {args.batch}: {m:9.0f} masks/s  ({1e6 / m:.0f} us/mask)")
    print(f"JPEG 427x640 decode + MAE transform at 224:       {i:9.0f} images/s ({1e3 / i:.2f} ms/image)")
    print(f"ratio: one thread masks {m / i:.0f}x as many images as it decodes and augments; masking adds "
          f"{100 * i / m:.1f}% to a worker's time per image")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
