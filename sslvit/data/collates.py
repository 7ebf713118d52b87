"""Collates that draw per-batch randomness off the training step (in the data-loader workers),
keyed by where the batch sits in the epoch, so a run resumed mid-epoch draws what an unbroken one
does. (DINO's multi-crop collate is in ``multicrop``; it draws nothing.)"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from sslvit.masking import block_masking


class BlockMaskCollate:
    """Batches ``(image, label, skipped)`` samples and draws a BEiT block mask per image:
    -> ((imgs (B, C, H, W), mask (B, N) bool), labels, skipped).

    The masks of the epoch's ``i``-th batch on process ``rank`` come from (seed, epoch, rank, i).
    A DataLoader deals its batches to its workers in turn, so a worker's ``k``-th batch is number
    ``first + worker + k * workers``, where ``first`` is the first batch this iteration yields
    (``set_position``, called before each epoch's iterator is made: the workers take a copy)."""

    def __init__(self, seed: int = 0, **mask_args):
        self.seed, self.mask_args = seed, mask_args
        self.epoch, self.first, self.rank, self._served = 0, 0, 0, 0

    def set_position(self, epoch: int, first_batch: int, rank: int) -> None:
        self.epoch, self.first, self.rank, self._served = epoch, first_batch, rank, 0

    def __call__(self, samples):
        imgs, labels, skipped = default_collate(samples)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.first + worker + self._served * workers
        self._served += 1
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, index])
        mask = block_masking(len(imgs), generator=rng, **self.mask_args)
        return (imgs, torch.as_tensor(mask)), labels, skipped
