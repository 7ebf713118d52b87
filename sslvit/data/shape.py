"""How big a run's data is: its training image count and typical image side, read cheaply
(folder: file names and image headers; shards: the index and the first samples), so the run
can pick a recipe that fits the data before anything is trained."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from PIL import Image

from sslvit.data.folder import held_out_split, scan_folder
from sslvit.data.shard_reader import build_shard_dataset, is_shard_spec, resolve_shards

SMALL_SIDE = 64  # px: images whose short side is at most this get the small-data recipes (pretraining, fine-tuning)
SAMPLED = 16  # images whose size is read: the median side of these is the data's


@dataclass(frozen=True)
class DataShape:
    count: int  # training images
    side: int  # median of min(width, height) over SAMPLED images, in px
    labelled: bool  # in class sub-folders (or shards written from them)


def fitted_batch(batch: int, images: int) -> int:
    """``batch``, at most half of ``images`` (a power of two, at least 2): a few dozen images still
    train. The small-data recipes' pretraining batch and fine-tuning's default both."""
    return min(batch, max(2, 1 << max(0, (images // 2).bit_length() - 1)))


def _median(values: list[int]) -> int:
    values = sorted(values)
    return values[len(values) // 2] if values else 0


def data_shape(data: str) -> DataShape:
    """The training split's image count and median side of a folder or a shard set."""
    if is_shard_spec(data):
        _, count, classes = resolve_shards(data, "train")
        with warnings.catch_warnings():  # a bad sample is the loop's to count and name, not the recipe's
            warnings.simplefilter("ignore")
            first = list(islice(iter(build_shard_dataset(data, "train")), SAMPLED))
        return DataShape(count, _median([min(img.size) for img, _, _ in first]), len(classes) > 1)
    root = Path(data).expanduser()
    split = (root / "train").is_dir() and (root / "val").is_dir()
    paths, _, classes = scan_folder(root / "train" if split else root)
    count = len(paths) if split else len(held_out_split(len(paths))[0])  # pretraining leaves the probes' val out
    sides = []
    for p in paths[:: max(1, len(paths) // SAMPLED)][:SAMPLED]:  # spread over the (sorted) classes
        try:
            with Image.open(p) as img:  # the header only: no decode
                sides.append(min(img.size))
        except OSError:
            continue  # an unreadable file is the loop's to count, not the recipe's
    return DataShape(count, _median(sides), len(classes) > 1)
