"""The fixed images a picture shows: a seeded sample spread over the classes (and, for a shard
set, over its shards), so a labelled folder read in sorted order does not fill every row of a
picture with its first class."""
from __future__ import annotations

import warnings
from itertools import islice

import numpy as np

from sslvit.data.shard_reader import ShardDataset

SHARD_POOL = 4  # a shard set: up to this many samples per picked row are read from each shard


def spread_order(labels: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """Positions of ``n`` samples: a seeded permutation dealt round-robin over the classes (in a
    seeded class order), so n >= classes shows every class; labels < 0 (unlabelled) are one class."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(int(labels[i]), []).append(int(i))
    queues = [by_class[c] for c in rng.permutation(sorted(by_class))]
    picked: list[int] = []
    while len(picked) < min(n, len(labels)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def spread_items(dataset, n: int, seed: int = 0) -> list:
    """-> up to ``n`` (image, label) pairs of ``dataset`` (map-style or a shard set), spread
    over its classes and shards; the same for the same seed. An unreadable image met on the way is
    passed over quietly: the training loop counts and names it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(dataset, ShardDataset):
            return _shard_items(dataset, n, seed)
        labels = np.asarray(dataset.labels) if getattr(dataset, "labels", None) else np.zeros(len(dataset), int)
        return [dataset[i][:2] for i in spread_order(labels, n, seed)]


def spread_sample(dataset, n: int, seed: int = 0) -> list:
    """The images of ``spread_items``: what ``first_items`` gave, spread over classes and shards."""
    return [x for x, _ in spread_items(dataset, n, seed)]


def _shard_items(dataset: ShardDataset, n: int, seed: int) -> list:
    """The first few samples of each of up to ``n`` seeded shards, then the same seeded deal
    over their classes: rows come from several shards, not the first one's opening run."""
    rng = np.random.default_rng(seed)
    urls = [dataset.urls[i] for i in rng.permutation(len(dataset.urls))[:n]]
    per_shard = SHARD_POOL * -(-n // len(urls))
    streams = []
    for url in urls:  # one reader per shard, unshuffled and on this process alone
        one = dataset.whole()
        one.urls, one.shuffle, one.resampled = [url], False, False
        streams.append(list(islice(((x, y) for x, y, _ in iter(one)), per_shard)))
    pool = [s[i] for i in range(per_shard) for s in streams if i < len(s)]  # shard-interleaved
    labels = np.asarray([y if dataset.labelled else 0 for _, y in pool])
    return [pool[i] for i in spread_order(labels, n, seed)]
