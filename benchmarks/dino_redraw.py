"""DINO on `cluttered` when the crops of an image no longer share its nuisances: every crop is
cut from its own drawing of the same source digit, with its own background, colour and clutter
(``--redraw nuisance``: the glyph's size, rotation and place kept for all crops of one sample)
or with everything drawn again (``--redraw all``). The online k-NN and the probes still read
the fixed `cluttered` train and val images, so its figures compare with the preset's runs
(`dino_sweep.sh`, `quality.py`). A test of why DINO stalls on the set, not a recipe: your own
images have no generator to draw them again.

    python benchmarks/dino_redraw.py [--redraw nuisance|all] [--out runs/dino-redraw] [KEY VALUE ...]

KEY VALUE pairs go to pretrain/dino.py over the `cluttered` preset (e.g. --train.epochs 4).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flops import print_machine  # noqa: E402

from sslvit.data import cluttered  # noqa: E402
from sslvit.data.dataset import ImageDataset  # noqa: E402
from sslvit.data.multicrop import MultiCropTransform  # noqa: E402
from sslvit.data.transforms import hflip_for  # noqa: E402
from sslvit.recipes.dino import DINORunConfig  # noqa: E402
from sslvit.train import entry  # noqa: E402


class Drawings:
    """One source digit of a cluttered split, drawn anew on request (the dataset's item)."""

    def __init__(self, digit: np.ndarray, pool: np.ndarray, strength: float, size: int):
        self.digit, self.pool, self.strength, self.size = digit, pool, strength, size

    def draw(self, rng: np.random.Generator, pose_rng: np.random.Generator) -> Image.Image:
        img = Image.fromarray(cluttered.draw(self.digit, self.pool, rng, self.strength, pose_rng=pose_rng))
        return img if self.size == cluttered.CANVAS else img.resize((self.size, self.size), Image.BICUBIC)


class RedrawCrops:
    """Drawings -> DINO's crops (2 global, then the local ones), each from its own drawing.

    The generators are seeded from torch's RNG, which the dataset seeds per (seed, epoch, sample),
    so a run is reproducible. ``keep_pose``: one pose per sample, shared by its crops."""

    def __init__(self, multicrop, keep_pose: bool):
        self.views = [multicrop.global1, multicrop.global2] + [multicrop.local] * multicrop.local_number
        self.keep_pose = keep_pose

    def __call__(self, drawings: Drawings) -> list[torch.Tensor]:
        seed = int(torch.randint(2 ** 62, ()).item())
        crops = []
        for v, view in enumerate(self.views):
            pose = np.random.default_rng([seed, 0 if self.keep_pose else v + 1, 1])
            crops.append(view(drawings.draw(np.random.default_rng([seed, v, 0]), pose)))
        return crops


def redraw_training_set(keep_pose: bool):
    """A stand-in for ``entry.training_set``: the split's source digits, as many samples an epoch
    as the fixed set has (COPIES per digit), each drawn again for every crop."""
    def training_set(cfg):
        spec = cluttered.parse_spec(cfg.data)
        if spec is None:
            raise SystemExit(f"--data {cfg.data}: this benchmark draws `cluttered` again; pass a cluttered spec.")
        pool, labels = cluttered.sources("train")
        copies = cluttered.COPIES["train"]
        items = [Drawings(d, pool, spec["strength"], cfg.model.img_size) for _ in range(copies) for d in pool]
        # per image: each crop comes from its own drawing, so crops.batched (one image, many crops) cannot apply
        multicrop = MultiCropTransform(cfg.model.img_size, cfg.crops, hflip_for(cfg.data, cfg.train.hflip))
        return ImageDataset(items, np.tile(labels, copies).tolist(), transform=RedrawCrops(multicrop, keep_pose),
                            seed=cfg.train.seed)
    return training_set


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redraw", choices=("nuisance", "all"), default="nuisance")
    p.add_argument("--out", default="runs/dino-redraw")
    args, keys = p.parse_known_args()
    print_machine()
    entry.training_set = redraw_training_set(keep_pose=args.redraw == "nuisance")
    entry.run_pretraining(DINORunConfig, "dino", argv=["--data", "cluttered", "--out", args.out,
                                                       "--train.knn_every", "1", "--crops.batched", "false", *keys])


if __name__ == "__main__":
    main()
