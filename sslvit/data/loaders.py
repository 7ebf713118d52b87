"""The training data loader of a run, for pretraining and fine-tuning alike: a shuffled map-style
DataLoader, or for shards the ``StreamLoader`` (equal steps per process)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader

from sslvit.data.shard_reader import ShardDataset
from sslvit.data.stream_loader import StreamLoader


def training_loader(dataset, batch_size: int, num_processes: int, num_workers: int, seed: int,
                    collate_fn: Optional[Callable] = None, device: Optional[torch.device] = None):
    """-> (loader, by_accelerate: whether accelerate's ``prepare`` must shard it). A stream is split by shards per
    process in the dataset itself, so accelerate must not split it again; a map-style set is
    sharded by accelerate's sampler. The DataLoader has its own generator: its workers' base seed
    must not be drawn from (and shift) the training RNG, or a mid-epoch resume, which makes a new
    iterator, would not be exact. Fresh workers each epoch (not persistent) keep resume exact."""
    pin = torch.cuda.is_available()
    if isinstance(dataset, ShardDataset):
        return StreamLoader(dataset, batch_size, num_processes, num_workers, collate_fn, device=device,
                            pin_memory=pin), False
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                        pin_memory=pin, collate_fn=collate_fn, persistent_workers=False,
                        generator=torch.Generator().manual_seed(seed))
    return loader, True
