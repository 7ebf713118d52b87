"""Mask generators for masked image modeling."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
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


def _numpy_rng(generator) -> np.random.Generator:
    """A numpy Generator from ``generator``: itself, one seeded from a torch.Generator, or (None)
    one seeded from torch's global RNG, so ``torch.manual_seed``, DataLoader worker seeding and
    accelerate's saved RNG state govern the masks as they govern everything else."""
    if isinstance(generator, np.random.Generator):
        return generator
    seed = torch.randint(0, 2**62, (), generator=generator).item()
    return np.random.default_rng(seed)


class _Uniforms:
    """U(0, 1) draws handed out one by one from chunks: one numpy call per 256 draws, not per draw."""

    def __init__(self, rng: np.random.Generator, chunk: int = 256):
        self.rng, self.chunk = rng, chunk
        self.buf, self.i = rng.random(chunk).tolist(), 0  # python floats: faster scalar math

    def __call__(self) -> float:
        if self.i == self.chunk:
            self.buf, self.i = self.rng.random(self.chunk).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]


def sample_block(uniform, grid: tuple[int, int], min_area: float, max_area: float,
                 min_aspect: float = 0.3) -> Optional[tuple[int, int, int, int]]:
    """One BEiT rectangle: area ~ U(min_area, max_area) patches (either order, as BEiT's
    ``random.uniform``), aspect h/w log-uniform in [min_aspect, 1/min_aspect], sides rounded,
    a uniform position. Returns (top, left, h, w), or None when the rectangle is not strictly
    smaller than the grid in both directions (BEiT rejects those). ``uniform()`` -> U(0, 1)."""
    H, W = grid
    area = min_area + (max_area - min_area) * uniform()
    log_lo = math.log(min_aspect)
    aspect = math.exp(log_lo + (-2.0 * log_lo) * uniform())
    h = int(round(math.sqrt(area * aspect)))
    w = int(round(math.sqrt(area / aspect)))
    if not (h < H and w < W):
        return None
    top = min(int(uniform() * (H - h + 1)), H - h)  # randint(0, H - h) inclusive
    left = min(int(uniform() * (W - w + 1)), W - w)
    return top, left, h, w


def _block_mask(uniform, rng: np.random.Generator, grid: tuple[int, int], num_masked: int, min_block: float,
                max_block: int, min_aspect: float, attempts: int) -> np.ndarray:
    """One (H, W) bool mask with exactly ``num_masked`` True (see ``block_masking``)."""
    mask = np.zeros(grid, dtype=bool)
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        delta = 0
        for _ in range(attempts):
            block = sample_block(uniform, grid, min_block, budget, min_aspect)
            if block is None:
                continue
            t, l, h, w = block
            new = h * w - int(mask[t:t + h, l:l + w].sum())
            # a block may overlap earlier ones, but must add something and never overshoot
            if 0 < new <= budget:
                mask[t:t + h, l:l + w] = True
                delta = new
                break
        if delta == 0:
            break  # no block fits the remaining budget: BEiT v2 tops up at random
        count += delta
    if count < num_masked:
        free = np.flatnonzero(~mask)
        mask.flat[rng.choice(free, num_masked - count, replace=False)] = True
    return mask


def block_masking(batch_size: int, grid: tuple[int, int], num_masked: int, min_block: float = 16,
                  max_block: Optional[int] = None, min_aspect: float = 0.3, attempts: int = 10,
                  generator=None) -> torch.Tensor:
    """BEiT's block-wise masking (Bao et al. 2022, BEiT v2's exact count) -> (B, H*W) bool, True = masked,
    raster order, a different mask per image.

    Rectangles of area ~ U(min_block, remaining budget) patches and log-uniform aspect in
    [min_aspect, 1/min_aspect] are placed (up to ``attempts`` tries each, overlaps allowed as long
    as they add patches without overshooting) until ``num_masked`` patches are masked or none fits;
    the rest is then masked at random, so every image has exactly ``num_masked``. BEiT: 14x14 grid,
    75 masked, min_block 16, max_block None (= num_masked). ``generator``: a numpy Generator, a
    torch.Generator, or None (torch's global RNG seeds it)."""
    H, W = grid
    if not 0 <= num_masked <= H * W:
        raise ValueError(f"num_masked {num_masked} must be between 0 and the {H}x{W} grid's {H * W} patches.")
    if min_block < 1 or not 0 < min_aspect <= 1:
        raise ValueError(f"min_block must be >= 1 and min_aspect in (0, 1] (got {min_block}, {min_aspect}).")
    rng = _numpy_rng(generator)
    uniform = _Uniforms(rng)
    max_block = num_masked if max_block is None else max_block
    masks = [_block_mask(uniform, rng, (H, W), num_masked, min_block, max_block, min_aspect, attempts)
             for _ in range(batch_size)]
    return torch.from_numpy(np.stack(masks).reshape(batch_size, H * W))


REFERENCE_GRID_PATCHES = 196  # BEiT's and iBOT's smallest block (16 patches) is for a 14 x 14 grid


def scaled_min_block(min_block: float, num_patches: int) -> float:
    """A smallest block given at the reference 14 x 14 grid, scaled to a grid of ``num_patches`` (>= 1)."""
    return max(1.0, min_block * num_patches / REFERENCE_GRID_PATCHES)


def keyed_crop_masks(key: Optional[int], rows: slice, views: int, grid: tuple[int, int], ratio: float,
                     ratio_var: float, probability: float, min_block: float, min_aspect: float) -> torch.Tensor:
    """iBOT's masks for ``views`` global crops of the images at ``rows`` of the step's global batch
    -> (views * B, H*W) bool, view-major (view 0 of every image, then view 1), True = masked.

    Each crop is masked with probability ``probability``, then block-wise (``block_masking``) at a
    ratio drawn from U(ratio - var, ratio + var). Crop (row r, view v) draws from (key, r, v), so a
    crop gets its mask whichever process and micro-batch hold its image; ``key`` None: torch's RNG."""
    n, b = grid[0] * grid[1], rows.stop - rows.start
    masks = torch.zeros(views * b, n, dtype=torch.bool)
    seed = None if key is not None else int(torch.randint(2**62, ()))
    for v in range(views):
        for i in range(b):
            rng = np.random.default_rng([key, rows.start + i, v] if key is not None else [seed, i, v])
            if rng.random() >= probability:
                continue
            count = int(n * rng.uniform(ratio - ratio_var, ratio + ratio_var))
            if count > 0:
                masks[v * b + i] = torch.as_tensor(block_masking(1, grid, count, min_block=min(min_block, count),
                                                                 min_aspect=min_aspect, generator=rng))[0]
    return masks
