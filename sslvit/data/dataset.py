"""One map-style dataset over in-memory images (digits) or image files (folders).

Samples are ``(image, label, skipped)``: an unreadable file is replaced by the next
readable one and counted in ``skipped`` so the loop can log it; batch shapes (and DDP
step counts) stay the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from sslvit.data.digits import digits_split
from sslvit.data.folder import DataError, load_rgb, scan_folder

EMBEDDED = ("digits",)


class ImageDataset(Dataset):
    def __init__(self, items: list, labels: list[int], transform: Optional[Callable] = None,
                 classes: Optional[list[str]] = None):
        self.items = items  # PIL images or paths
        self.labels = labels
        self.transform = transform
        self.classes = classes or []

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int):
        item = self.items[i]
        return load_rgb(item) if isinstance(item, Path) else item

    def __getitem__(self, i: int):
        skipped = 0
        for attempt in range(min(len(self.items), 100)):
            j = (i + attempt) % len(self.items)
            img = self._load(j)
            if img is not None:
                x = self.transform(img) if self.transform is not None else img
                return x, self.labels[j], skipped
            skipped += 1
        raise DataError(f"100 images in a row from index {i} could not be read; check the data folder.")


def build_dataset(data: str, split: str, img_size: int, transform=None, val_fraction: float = 0.2,
                  seed: int = 0) -> ImageDataset:
    """``data`` is 'digits' or a folder. split 'train' | 'val' | 'all'.

    A folder with ``train/`` and ``val/`` sub-folders uses them; any other folder is used whole
    for pretraining ('all' and 'train'), and for 'val' a fixed ``val_fraction`` is held out of it
    (the rest then forms 'train' for the probes, which ask with ``labelled=True``).
    """
    if data == "digits":
        imgs, labels = digits_split("val" if split == "val" else "train", img_size)
        return ImageDataset(imgs, labels, transform, classes=[str(i) for i in range(10)])
    root = Path(data).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir() and split in ("train", "val"):
        paths, labels, classes = scan_folder(root / split)
        return ImageDataset(paths, labels, transform, classes)
    paths, labels, classes = scan_folder(root)
    if split == "all":
        return ImageDataset(paths, labels, transform, classes)
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = max(1, int(round(len(paths) * val_fraction)))
    keep = order[:n_val] if split == "val" else order[n_val:]
    keep = sorted(keep.tolist())
    return ImageDataset([paths[i] for i in keep], [labels[i] for i in keep], transform, classes)
