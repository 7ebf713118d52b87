"""Streaming webdataset shards into any objective or probe through the same ``--data`` option.

``--data`` may be a folder holding ``train.json`` (and ``val.json``) written by
``python -m sslvit.data.shards``, an index file ``<split>.json``, or a shard pattern:
local paths, brace patterns (``shards/train-{000000..000099}.tar``) or any URL webdataset's
gopen opens (``pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -``). A pattern's index is
the same location with ``-<shard number>.tar`` replaced by ``.json``.

Epoch mode (default): each epoch the shard list is shuffled with (seed, epoch) and dealt out
round-robin to every (process, data-loader worker) slot; together the slots read every sample
exactly once. Resampled mode draws shards with replacement forever (for very large sets);
the epoch is then the index's sample count, nominally.

webdataset does the URL opening (gopen), brace expansion, key grouping and shuffle buffer.
Two parts are ours: the decoding, because a bad sample must be counted per shard and per kind
(webdataset's decode handler only sees the exception); and the member reader of uncompressed
tars, because Python's ``tarfile``, which webdataset uses, parses each 512-byte header in
about 0.25 ms, as long as decoding and augmenting a small JPEG (``benchmarks/data_read.py``).
Compressed shards (``.tar.gz``, ``.tgz``) go through webdataset's own reader.
A bad sample is not an exception but a :class:`BadSample` marker in the stream, so the
counts reach the main process through the data loader itself.
"""
from __future__ import annotations

import copy
import io
import itertools
import random
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from sslvit.data.decode import to_rgb
from sslvit.data.folder import DataError
from sslvit.data.shards import read_index

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")
_SHARD_NUMBER = re.compile(r"-(\{[^{}]*\}|\d+)\.tar")


@dataclass(frozen=True)
class BadSample:
    """A sample that was skipped: ``shard`` (its URL) and ``kind`` (what was wrong)."""
    shard: str
    kind: str


@dataclass
class ShardEnd:
    """The end of one shard's read: ``shard`` (its URL) and ``count`` (samples in it, good and bad)."""
    shard: str
    count: int


def is_shard_spec(data: str) -> bool:
    if data.startswith("pipe:") or "://" in data or ".tar" in data or data.endswith(".json"):
        return True
    p = Path(data).expanduser()
    return p.is_dir() and (p / "train.json").is_file()


def _index_location(spec: str) -> str:
    matches = list(_SHARD_NUMBER.finditer(spec))
    if not matches:
        raise DataError(f"Cannot find the index of '{spec}': shard names must end in -<number>.tar (or a brace "
                        "pattern of numbers); point --data at the shards' <split>.json instead.")
    m = matches[-1]
    return spec[:m.start()] + ".json" + spec[m.end():]


def resolve_shards(spec: str, split: str) -> tuple[list[str], int, list[str]]:
    """``--data`` -> (shard URLs, number of samples, class names) of ``split``.

    ``split`` is 'train', 'val' or 'all' ('all' = 'train' for shard sets)."""
    urls, counts, classes = resolve_shard_counts(spec, split)
    return urls, sum(counts.values()), classes


def resolve_shard_counts(spec: str, split: str) -> tuple[list[str], dict[str, int], list[str]]:
    """As ``resolve_shards``, with the index's sample count per shard name instead of the total."""
    p = Path(spec).expanduser()
    if p.is_dir():
        name = "val" if split == "val" else "train"
        location = p / f"{name}.json"
        if not location.is_file():
            raise DataError(f"'{p}' holds no {name}.json; write the '{name}' split with `python -m sslvit.data.shards` "
                            "from a folder with train/ and val/ sub-folders.")
        return _from_index(str(location), None)
    if split == "val":
        raise DataError(f"'{spec}' is one shard set and this needs a val split too; point --data at the folder that "
                        "holds train.json and val.json.")
    if spec.endswith(".json"):
        return _from_index(spec, None)
    urls = wds.shardlists.expand_urls(spec)
    if not urls:
        raise DataError(f"The shard pattern '{spec}' expands to no shards; check its braces.")
    return _from_index(_index_location(spec), urls)


def _from_index(location: str, urls: Optional[list[str]]) -> tuple[list[str], dict[str, int], list[str]]:
    index = read_index(location)
    counts = {s["name"]: s["count"] for s in index["shards"]}
    if urls is None:
        base = location[: -len(Path(location).name)]
        urls = [base + s["name"] for s in index["shards"]]
    local = [u for u in urls if not u.startswith("pipe:") and "://" not in u]
    missing = [u for u in local if not Path(u).expanduser().is_file()]
    if missing:
        raise DataError(f"Shard '{missing[0]}' does not exist ({len(missing)} of {len(urls)} missing); check the "
                        "--data pattern or write the shards again.")
    names = [shard_name(u) for u in urls]
    unknown = [n for n in names if n not in counts]
    if unknown:
        raise DataError(f"Shard '{unknown[0]}' is not in the index '{location}'; the pattern and the index come "
                        "from different writes.")
    return urls, {n: counts[n] for n in names}, list(index.get("classes", []))


def shard_name(url: str) -> str:
    m = re.search(r"[^/\s]+\.tar", url)
    return m.group(0) if m else url


def decode_sample(sample: dict, read_for: Optional[int] = None) -> tuple[Optional[Image.Image], int, Optional[str]]:
    """A webdataset sample dict -> (RGB image or None, label (-1 if none), what was wrong or None);
    ``read_for``: see ``decode.to_rgb``."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None or not sample[key]:
        return None, -1, "missing image"
    label = -1
    if "cls" in sample:
        try:
            label = int(sample["cls"].decode().strip())
        except (UnicodeDecodeError, ValueError):
            return None, -1, "bad label"
    try:
        with Image.open(io.BytesIO(sample[key])) as img:
            return to_rgb(img, read_for), label, None
    except Exception:  # PIL raises many types for corrupt bytes
        return None, -1, "corrupt image"


class ShardDataset(IterableDataset):
    """Yields ``(image, label, 0)`` per good sample and a :class:`BadSample` per bad one; with
    ``keyed`` the third item is the sample's place in the written order (``written_place``), by
    which the probes put features read by many processes and workers back in one order.

    ``rank``/``world_size`` default to the running process group (or 0/1). ``set_epoch`` and
    ``set_pass`` choose the order: (seed, epoch, pass) fix the shard order and the shuffle buffer.
    With ``markers=False`` bad samples are skipped with a warning instead (for the probes,
    whose collate stacks every item).
    """

    def __init__(self, urls: list[str], num_samples: int, transform: Optional[Callable] = None,
                 classes: Optional[list[str]] = None, shuffle: bool = True, shuffle_buffer: int = 1000,
                 resampled: bool = False, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, markers: bool = True, keyed: bool = False,
                 read_for: Optional[int] = None):
        self.urls = list(urls)
        self.read_for = read_for  # the crops' side: a large JPEG decodes smaller (``decode.draft``)
        self.num_samples = num_samples
        self.transform = transform
        self.classes = classes or []
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.markers = markers
        self.keyed = keyed
        self.claimed: dict[str, int] = {}  # shard name -> count in the index (build_shard_dataset sets it)
        self.shard_ends = False  # yield a ShardEnd after each shard (the training stream's count check)
        self.epoch = 0
        self.pass_index = 0

    def __len__(self) -> int:
        return self.num_samples

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.pass_index = 0

    def set_pass(self, pass_index: int) -> None:
        self.pass_index = pass_index

    def _slot(self) -> tuple[int, int]:
        """-> (this reader's slot, number of slots) over processes x data-loader workers."""
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world = 0, 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def shards_for_slot(self, slot: int, slots: int) -> list[str]:
        """Epoch mode: this slot's shards, a round-robin deal of the (seed, epoch, pass) order."""
        order = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}-{self.pass_index}").shuffle(order)
        return order[slot::slots]

    def _resampled_shards(self, rng: random.Random) -> Iterator[str]:
        while True:
            yield rng.choice(self.urls)

    def __iter__(self):
        slot, slots = self._slot()
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.pass_index}-{slot}")
        shards = self._resampled_shards(rng) if self.resampled else iter(self.shards_for_slot(slot, slots))
        ends: list[ShardEnd] = []  # kept out of the shuffle buffer: handed on as soon as a shard is read

        def divert(items):
            for item in items:
                if isinstance(item, ShardEnd):
                    ends.append(item)
                else:
                    yield item

        stream, served = divert(self._read(shards)), 0
        if self.shuffle and self.shuffle_buffer > 1:
            stream = wds.filters._shuffle(stream, self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)
        for item in itertools.chain(stream, [None]):
            while ends:
                end = ends.pop(0)
                if self.shard_ends:
                    yield end
            if item is None:
                return
            if isinstance(item, BadSample):
                if self.markers:
                    yield item
                else:
                    warnings.warn(f"Skipping a bad sample in shard '{item.shard}' ({item.kind}).", stacklevel=2)
                continue
            img, label, place = item
            yield self._augment(img, slot, served), label, place if self.keyed else 0
            served += 1

    def _augment(self, img, slot: int, n: int):
        """The transform with its random draws keyed by (seed, epoch, pass, slot, n), the ``n``-th sample
        this slot serves: not by the worker's or the process's RNG, so a run resumed mid-epoch (which
        re-reads the epoch's first batches) crops every later sample as an unbroken run does."""
        if self.transform is None:
            return img
        key = (((self.seed * 1_000_003 + self.epoch) * 1009 + self.pass_index) * 10_007 + slot) * 10_000_019 + n
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(key % 2**63)  # the CPU's only, as ImageDataset._augment
            return self.transform(img)

    def whole(self) -> "ShardDataset":
        """A copy that reads every shard on this process alone, without markers: what the main
        process reads to look samples up or to score raw pixels, whichever process group it is in."""
        one = copy.copy(self)
        one.rank, one.world_size, one.markers, one.shard_ends = 0, 1, False, False
        return one

    def _read(self, shards: Iterator[str]):
        """Shard URLs -> (PIL image, label, written place) | BadSample, one shard at a time so every
        error has its shard."""
        number = {url: i for i, url in enumerate(self.urls)}
        for url in shards:
            errors: list[Exception] = []

            def keep_going(exn: Exception) -> bool:
                errors.append(exn)
                return True

            read = 0
            for sample in wds.tariterators.group_by_keys(_tar_files(url, keep_going), handler=keep_going):
                while errors:
                    read += 1
                    yield BadSample(url, _error_kind(errors.pop(0)))
                img, label, problem = decode_sample(sample, self.read_for)
                read += 1
                yield BadSample(url, problem) if problem else (img, label, written_place(number[url], read))
            while errors:
                read += 1
                yield BadSample(url, _error_kind(errors.pop(0)))
            yield ShardEnd(url, read)


def written_place(shard_number: int, member: int) -> int:
    """A sample's place in a shard set's written order: its shard's number in the set, then its
    member count within the shard (2**32 members a shard at most)."""
    return (shard_number << 32) | member


def tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of an uncompressed tar stream (ustar, GNU long names,
    pax paths). A header whose checksum fails or data cut short raises ``tarfile.ReadError``."""
    long_name = None
    while True:
        header = stream.read(512)
        if not header or not any(header):  # end of archive (a zero block, or no terminator at all)
            return
        if len(header) < 512:
            raise tarfile.ReadError("truncated tar header")
        try:
            checksum, size = _number(header[148:156]), _number(header[124:136])
        except ValueError:
            checksum, size = -1, 0
        if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):  # the field itself counts as spaces
            raise tarfile.ReadError("bad tar header checksum")
        kind = header[156:157]
        data = stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        stream.read(-size % 512)
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode()
        elif kind == b"x":
            long_name = _pax_path(data) or long_name
        elif kind in (b"0", b"\0", b"7"):
            name = header[:100].rstrip(b"\0").decode()
            if header[257:262] == b"ustar" and header[345]:
                name = header[345:500].rstrip(b"\0").decode() + "/" + name
            yield long_name or name, data
            long_name = None
        else:
            long_name = None


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    return int(digits, 8) if digits else 0


def _pax_path(records: bytes) -> Optional[str]:
    for line in records.decode("utf-8", "replace").split("\n"):
        _, _, kv = line.partition(" ")
        key, _, value = kv.partition("=")
        if key == "path":
            return value
    return None


def _tar_files(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's file stream of one shard (dicts of fname, data, __url__; ``{}`` at the end)."""
    if url.rstrip().endswith((".tar.gz", ".tgz")):
        yield from wds.tariterators.tar_file_expander(wds.tariterators.url_opener([{"url": url}], handler=handler),
                                                      handler=handler)
        return
    try:
        with wds.gopen(url, "rb") as stream:
            for name, data in tar_members(stream):
                yield {"fname": name, "data": data, "__url__": url}
    except Exception as exn:  # unreadable, truncated or corrupt: the handler counts it and the shard ends
        handler(exn)
    yield {}


def _error_kind(exn: Exception) -> str:
    return "unreadable shard" if isinstance(exn, FileNotFoundError) else "truncated or corrupt tar"


def build_shard_dataset(spec: str, split: str, transform=None, shuffle: bool = False, seed: int = 0,
                        markers: bool = False, resampled: bool = False, shuffle_buffer: int = 1000,
                        keyed: bool = False, read_for: Optional[int] = None) -> ShardDataset:
    urls, counts, classes = resolve_shard_counts(spec, split)
    dataset = ShardDataset(urls, sum(counts.values()), transform, classes, shuffle=shuffle,
                           shuffle_buffer=shuffle_buffer, resampled=resampled, seed=seed, markers=markers, keyed=keyed,
                           read_for=read_for)
    dataset.claimed = counts  # what the index says each shard holds, checked against the first pass
    dataset.shard_ends = markers
    return dataset
