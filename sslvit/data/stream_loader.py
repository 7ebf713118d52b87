"""Batches from a streamed (shard) dataset with the same number of steps on every process.

A map-style dataset gets a sampler that pads and trims per process; a stream cannot be
indexed, and processes that read different shards see different sample counts. Left alone,
the process that runs out first leaves the others waiting in an all-reduce forever. So every
process takes exactly ``len(loader)`` batches per epoch, ``num_samples // (batch x processes)``:
a process whose shards run out starts another pass over them (like DistributedSampler's
padding) and one with samples left over stops (like ``drop_last``).

Each worker collates full batches of its own samples (one tensor per batch crosses the process
boundary, not one per image) and hands its last, partial batch over as loose samples; those
are pooled here into full batches, so no sample is lost at a worker's end of pass.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, IterableDataset, default_collate

from sslvit.data.folder import DataError
from sslvit.data.shard_reader import BadSample, ShardDataset, ShardEnd, shard_name


def _unbatched(batch):
    return batch


@dataclass
class _Collated:
    batch: tuple


@dataclass
class _Loose:
    samples: list


class _WorkerBatches(IterableDataset):
    """A worker's stream -> full collated batches, then its leftover samples, with the BadSample markers."""

    def __init__(self, dataset: ShardDataset, batch_size: int, collate_fn: Callable):
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn

    def __iter__(self):
        buf = []
        for item in self.dataset:
            if isinstance(item, (BadSample, ShardEnd)):
                yield item
                continue
            buf.append(item)
            if len(buf) == self.batch_size:
                yield _Collated(self.collate_fn(buf))
                buf = []
        if buf:
            yield _Loose(buf)


class StreamLoader:
    """Iterates ``(batch..., skipped (B,))`` like the map-style path; ``bad_samples`` counts the
    skipped samples per (shard, kind) of this epoch's first pass over this process's shards."""

    def __init__(self, dataset: ShardDataset, batch_size: int, num_processes: int, num_workers: int = 0,
                 collate_fn: Optional[Callable] = None, device: Optional[torch.device] = None,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.collate_fn = collate_fn or default_collate
        self.device = device
        self.pin_memory = pin_memory
        self.num_batches = len(dataset) // (batch_size * num_processes)
        shards = len(dataset.urls)
        if not dataset.resampled and shards < num_processes:
            raise DataError(f"The data has {shards} shard(s) for {num_processes} processes, and each process reads "
                            "whole shards; write smaller shards (--max-count) or set train.data_resampled true.")
        if not dataset.resampled and shards < num_processes * max(1, num_workers):
            warnings.warn(f"{shards} shards for {num_processes} process(es) x {num_workers} workers: some workers "
                          "will have no shard to read; write smaller shards for full speed.", stacklevel=2)
        self.bad_samples: Counter = Counter()
        self.shard_reads: dict[str, int] = {}  # shard name -> samples read in a complete first-pass read
        self.epoch = 0
        self._skip = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.bad_samples = Counter()
        self.shard_reads = {}

    def _batches(self):
        """Collated batches, pass after pass of this process's shards."""
        pass_index, loose = 0, []
        while True:
            self.dataset.set_epoch(self.epoch)
            self.dataset.set_pass(pass_index)
            # batch_size=None: the workers batch themselves (see _WorkerBatches)
            # its own generator: the workers' base seed must not be drawn from (and shift) the training RNG
            generator = torch.Generator().manual_seed((self.dataset.seed * 1_000_003 + self.epoch) * 1009 + pass_index)
            loader = DataLoader(_WorkerBatches(self.dataset, self.batch_size, self.collate_fn), batch_size=None,
                                num_workers=self.num_workers, collate_fn=_unbatched, pin_memory=self.pin_memory,
                                generator=generator)
            good = 0
            for item in loader:
                if isinstance(item, ShardEnd):
                    if pass_index == 0:
                        self.shard_reads[shard_name(item.shard)] = item.count
                elif isinstance(item, BadSample):
                    if pass_index == 0:  # a padding pass re-reads the same shards: count each bad sample once
                        self.bad_samples[(item.shard, item.kind)] += 1
                elif isinstance(item, _Collated):
                    good += self.batch_size
                    yield item.batch
                else:
                    good += len(item.samples)
                    loose += item.samples
                    while len(loose) >= self.batch_size:
                        yield self.collate_fn(loose[:self.batch_size])
                        loose = loose[self.batch_size:]
            if good == 0:
                bad = sum(self.bad_samples.values())
                raise DataError(f"No readable sample in this process's shards ({bad} bad, "
                                f"{len(self.dataset.urls)} shards in the set); check the shards with "
                                "`python -m sslvit.data.shards` or point --data at good ones.")
            pass_index += 1

    def skipping(self, n: int) -> "StreamLoader":
        """The next iteration yields this epoch's batches after the first ``n``, which are read and
        dropped (a stream cannot seek), so the rest are exactly what an unbroken epoch gives."""
        self._skip = n
        return self

    def __iter__(self):
        batches, skip, self._skip = self._batches(), self._skip, 0
        for i in range(self.num_batches):
            *batch, skipped = next(batches)
            if i < skip:
                continue
            batch = tuple(batch) + (torch.as_tensor(skipped),)
            yield send_to_device(batch, self.device) if self.device is not None else batch
        batches.close()


def bad_sample_report(counts: Counter) -> dict:
    """{(shard, kind): n} -> {shard: {kind: n}} for the log."""
    out: dict = {}
    for (shard, kind), n in sorted(counts.items()):
        out.setdefault(shard, {})[kind] = n
    return out


def wrong_counts(claimed: dict[str, int], reads: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{shard: (count in the index, count read)} for every fully read shard whose index count is wrong."""
    return {name: (claimed[name], n) for name, n in sorted(reads.items()) if name in claimed and claimed[name] != n}
