"""Mask generators for masked image modeling."""
from __future__ import annotations

import torch


def global_batch_rows(key: int, rows: slice, global_size: int, num_patches: int, device=None) -> torch.Tensor:
    """Uniform noise (len(rows), N): this process's rows of one (global_size, N) draw seeded by ``key``.

    Every process (and every micro-batch of an accumulation window) draws the same global
    table and keeps its own rows, so a sample's mask depends on its place in the global batch,
    not on how the batch is split: 2 processes x B/2 and 1 x B mask each image alike."""
    g = torch.Generator().manual_seed(key)
    return torch.rand(global_size, num_patches, generator=g)[rows].to(device)


def random_masking(batch_size: int, num_patches: int, mask_ratio: float, device=None, generator=None,
                   noise: torch.Tensor | None = None):
    """MAE's per-sample random masking by argsort of uniform noise.

    Returns ``ids_keep`` (B, K) indices of the visible patches with K = int(N * (1 - ratio)),
    ``mask`` (B, N) with 1 for masked and 0 for visible patches, and ``ids_restore`` (B, N),
    the inverse permutation that puts [visible, masked] tokens back in raster order.
    ``noise`` (B, N) replaces the uniform draw (see ``global_batch_rows``).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (got {mask_ratio}).")
    len_keep = int(num_patches * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore
