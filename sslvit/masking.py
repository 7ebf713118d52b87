"""Mask generators for masked image modeling."""
from __future__ import annotations

import torch


def random_masking(batch_size: int, num_patches: int, mask_ratio: float, device=None, generator=None):
    """MAE's per-sample random masking by argsort of uniform noise.

    Returns ``ids_keep`` (B, K) indices of the visible patches with K = int(N * (1 - ratio)),
    ``mask`` (B, N) with 1 for masked and 0 for visible patches, and ``ids_restore`` (B, N),
    the inverse permutation that puts [visible, masked] tokens back in raster order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (got {mask_ratio}).")
    len_keep = int(num_patches * (1 - mask_ratio))
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore
