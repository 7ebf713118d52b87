"""Collates that draw masks off the training step (in the data-loader workers), keyed by where the
batch sits in the epoch, so a run resumed mid-epoch draws what an unbroken one does (BEiT's block
masks; DINO's ``multicrop_collate`` draws nothing, iBOT draws its masks by the global rows)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from sslvit.masking import block_masking


class PositionKeyed:
    """Base of the collates whose draws are keyed by the batch's place in the epoch.

    The draws of the epoch's ``i``-th batch on process ``rank`` come from (seed, epoch, rank, i).
    A DataLoader deals its batches to its workers in turn, so a worker's ``k``-th batch is number
    ``first + worker + k * workers``, where ``first`` is the first batch this iteration yields
    (``set_position``, called before each epoch's iterator is made: the workers take a copy)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.epoch, self.first, self.rank, self._served = 0, 0, 0, 0

    def set_position(self, epoch: int, first_batch: int, rank: int) -> None:
        self.epoch, self.first, self.rank, self._served = epoch, first_batch, rank, 0

    def batch_rng(self) -> np.random.Generator:
        """The generator of the batch being collated now (advances the count)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.first + worker + self._served * workers
        self._served += 1
        return np.random.default_rng([self.seed, self.epoch, self.rank, index])


class BlockMaskCollate(PositionKeyed):
    """Batches ``(image, label, skipped)`` samples and draws a BEiT block mask per image:
    -> ((imgs (B, C, H, W), mask (B, N) bool), labels, skipped)."""

    def __init__(self, seed: int = 0, **mask_args):
        super().__init__(seed)
        self.mask_args = mask_args

    def __call__(self, samples):
        imgs, labels, skipped = default_collate(samples)
        mask = block_masking(len(imgs), generator=self.batch_rng(), **self.mask_args)
        return (imgs, torch.as_tensor(mask)), labels, skipped


class CompositeCollate:
    """[({name: sample}, label, skipped)] -> ({name: that part's batch}, labels, skipped), each part's
    batch made by its own collate (default stacking where it has none)."""

    def __init__(self, collates: dict[str, Callable | None]):
        self.collates = {name: c or default_collate for name, c in collates.items()}

    def __call__(self, samples):
        batch, labels, skipped = {}, None, None
        for name, collate in self.collates.items():
            part, labels, skipped = collate([(s[0][name], s[1], s[2]) for s in samples])
            batch[name] = part
        return batch, labels, skipped

    def set_position(self, epoch: int, first_batch: int, rank: int) -> None:
        for c in self.collates.values():
            if hasattr(c, "set_position"):
                c.set_position(epoch, first_batch, rank)
