"""One map-style dataset over in-memory images (digits) or image files (folders).

Samples are ``(image, label, skipped)``: an unreadable file is replaced by the next
readable one and ``skipped`` is 1 for that draw, so the loop can log the count (and stop past
``train.max_unreadable``); batch shapes (and DDP step counts) stay the same.
"""
from __future__ import annotations

import warnings
from itertools import islice
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from sslvit.data.cluttered import cluttered_split, parse_spec
from sslvit.data.digits import digits_split
from sslvit.data.folder import SPLIT_SEED, VAL_FRACTION, DataError, held_out_split, load_rgb, scan_folder
from sslvit.data.shard_reader import ShardDataset, build_shard_dataset, is_shard_spec

EMBEDDED = ("digits", "cluttered")


def is_embedded(data: str) -> bool:
    """'digits' or a 'cluttered[:options]' spec: a built-in labelled set with a fixed train/val split."""
    return data == "digits" or parse_spec(data) is not None


class ImageDataset(Dataset):
    def __init__(self, items: list, labels: list[int], transform: Optional[Callable] = None,
                 classes: Optional[list[str]] = None, seed: Optional[int] = None, read_for: Optional[int] = None):
        self.items = items  # PIL images or paths
        self.labels = labels
        self.transform = transform
        self.classes = classes or []
        self.seed = seed  # set: each sample's augmentation is drawn from (seed, epoch, index)
        self.epoch = 0
        self.read_for = read_for  # the crops' side: a large JPEG file decodes smaller (``decode.draft``)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _augment(self, img, index: int):
        if self.seed is None:
            return self.transform(img)
        # keyed by the sample, not by the process or worker that loads it: 1 x B and 2 x B/2
        # processes (and any number of workers) crop every image alike
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator's (lazily, with a
            # stack trace each time), 40 % of this call on a 32 px image, and fork_rng restores only the CPU's
            torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.transform(img)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0

    def _load(self, i: int):
        item = self.items[i]
        return load_rgb(item, self.read_for) if isinstance(item, Path) else item

    def __getitem__(self, i: int):
        # the search's warnings are held back: only this draw's own image is named, and a folder where
        # nothing reads gets its one sentence, not a warning for each of its files first
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            for attempt in range(len(self.items)):  # the next readable image, however far
                j = (i + attempt) % len(self.items)
                img = self._load(j)
                if img is not None:
                    break
            else:
                raise DataError(f"None of the {len(self.items)} images could be read (the first: "
                                f"'{self.items[0]}'); check the data folder.")
        if skipped:
            warnings.warn(str(skipped[0].message), UserWarning, stacklevel=2)
        x = self._augment(img, j) if self.transform is not None else img
        return x, self.labels[j], int(bool(skipped))  # 1: this draw's own image was unreadable

    def unreadable(self, n: int = 3) -> list[str]:
        """The first ``n`` files that cannot be decoded (for an error message: it opens files in order)."""
        bad = []
        for item in self.items:
            if isinstance(item, Path) and load_rgb(item) is None:
                bad.append(str(item))
                if len(bad) == n:
                    break
        return bad


def build_dataset(data: str, split: str, img_size: int, transform=None, val_fraction: float = VAL_FRACTION,
                  seed: int = SPLIT_SEED) -> ImageDataset | ShardDataset:
    """``data`` is 'cluttered' / 'digits' (embedded), a folder or a shard set (see ``shard_reader``);
    split 'train' | 'val' | 'all'.

    A shard set comes back in its written order, unshuffled, bad samples skipped with a warning,
    each sample keyed by its place in that order: what the probes want (``extract_features`` puts
    the features of many readers back in that order); pretraining asks ``build_shard_dataset`` for
    its shuffled stream.

    A folder with ``train/`` and ``val/`` sub-folders uses them; any other folder holds out a fixed
    ``val_fraction`` as 'val' (the probes' queries), and 'train' is the rest: what pretraining and
    the probes train on. 'all' is the whole folder.
    """
    if is_embedded(data):
        which = "val" if split == "val" else "train"
        imgs, labels = (digits_split(which, img_size) if data == "digits"
                        else cluttered_split(which, img_size, **parse_spec(data)))
        return ImageDataset(imgs, labels, transform, classes=[str(i) for i in range(10)])
    if not data.strip():
        raise DataError("--data is empty; pass 'cluttered', 'digits', a folder of images or a shard set.")
    if is_shard_spec(data):
        return build_shard_dataset(data, split, transform, seed=seed, keyed=True, read_for=img_size)
    root = Path(data).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir() and split in ("train", "val"):
        paths, labels, classes = scan_folder(root / split)
        return ImageDataset(paths, labels, transform, classes, read_for=img_size)
    paths, labels, classes = scan_folder(root)
    if split == "all":
        return ImageDataset(paths, labels, transform, classes, read_for=img_size)
    train, val = held_out_split(len(paths), val_fraction, seed)
    keep = val if split == "val" else train
    return ImageDataset([paths[i] for i in keep], [labels[i] for i in keep], transform, classes, read_for=img_size)


def class_count(dataset) -> int:
    """Classes among a labelled dataset's images (a shard set's index lists them; 0 unlabelled)."""
    if not dataset.labelled:
        return 0
    return len(dataset.classes) if isinstance(dataset, ShardDataset) else len(set(dataset.labels))


def check_labelled(dataset, data: str, who: str, fix: str = "pass --data with a folder whose images sit in one "
                   "sub-folder per class (optionally under train/ and val/)") -> None:
    """Refuse ``who`` (a probe) on ``data`` without labels of at least two classes: on one class every
    image is classified right, and a probe would read 100%."""
    n = class_count(dataset)
    if n == 0:
        raise DataError(f"{who} needs labels, and '{data}' has none; {fix}.")
    if n == 1:
        raise DataError(f"{who} needs at least two classes, and '{data}' has one (every image would be classified "
                        f"right); {fix}.")


def first_items(dataset, n: int) -> list:
    """The first ``n`` images of a dataset, map-style or streamed (in its order, every shard's)."""
    if isinstance(dataset, ShardDataset):
        return [x for x, _, _ in islice(iter(dataset.whole()), n)]
    return [dataset[i][0] for i in range(min(n, len(dataset)))]


def items_at(dataset, indices) -> dict:
    """{index: image} for the given sample numbers: of a map-style set its indices, of a stream its
    good samples in the written order (``extract_features``'s order for it)."""
    wanted = set(int(i) for i in indices)
    if not isinstance(dataset, ShardDataset):
        return {i: dataset[i][0] for i in wanted}
    out = {}
    for pos, (x, _, _) in enumerate(dataset.whole()):
        if pos in wanted:
            out[pos] = x
            if len(out) == len(wanted):
                break
    return out


def iterate(dataset):
    """Every sample of a dataset once: map-style by index (its __getitem__ wraps around), or streamed."""
    if isinstance(dataset, ShardDataset):
        yield from dataset.whole()  # every shard, in whatever process group
    else:
        for i in range(len(dataset)):
            yield dataset[i]
