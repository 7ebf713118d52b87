"""BEiT block-wise masking: exact counts, rectangle bounds, seeding, and the distribution of
BEiT's own generator (reimplemented here from the paper's description)."""
import math
import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from sslvit.masking import block_masking, random_masking, sample_block


@pytest.mark.parametrize("grid,count,min_block", [((14, 14), 75, 16), ((4, 4), 6, 16), ((4, 4), 6, 1.3),
                                                  ((5, 9), 20, 4), ((14, 14), 0, 16), ((3, 3), 9, 1),
                                                  ((1, 7), 3, 1)])
def test_exact_count_on_the_whole_grid(grid, count, min_block):
    masks = block_masking(64, grid, count, min_block=min_block, generator=np.random.default_rng(0))
    assert masks.dtype == torch.bool and masks.shape == (64, grid[0] * grid[1])
    assert torch.all(masks.sum(1) == count)


def _uniforms(seed):
    rnd = random.Random(seed)
    return rnd.random


def test_rectangles_respect_area_and_aspect_bounds_and_the_grid():
    """A side is round(sqrt(area * aspect)), so (h, w) must come from some area in [16, 75] and
    aspect in [0.3, 1/0.3] up to that rounding: h in [sqrt(A r) - 1/2, sqrt(A r) + 1/2], etc."""
    uniform, lo, hi = _uniforms(0), 16, 75
    blocks = [sample_block(uniform, (100, 100), lo, hi, 0.3) for _ in range(20000)]
    h, w = (np.array([b[i] for b in blocks], float) for i in (2, 3))
    assert np.all((h - 0.5) * (w - 0.5) <= hi) and np.all((h + 0.5) * (w + 0.5) >= lo)
    assert np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3) and np.all((h + 0.5) / (w - 0.5) >= 0.3)
    # the bounds are reached, and log-uniform aspect makes tall and wide blocks equally likely
    assert (h * w).min() <= 17 and (h * w).max() >= 72 and (h / w).max() >= 3 and (w / h).max() >= 3
    tall, wide = (h > w).mean(), (w > h).mean()
    assert abs(tall - wide) < 4 * math.sqrt((tall + wide) / len(h))
    # placement stays inside a small non-square grid, and blocks as large as a side are refused
    uniform = _uniforms(1)
    for _ in range(5000):
        b = sample_block(uniform, (5, 9), 1, 30, 0.3)
        if b is not None:
            t, l, bh, bw = b
            assert 0 <= t and t + bh <= 5 and 0 <= l and l + bw <= 9 and bh < 5 and bw < 9
    assert all(sample_block(_uniforms(2), (4, 4), 16, 16, 1.0) is None for _ in range(10))  # 4x4 is not < 4


def test_every_image_gets_its_own_mask_and_seeds_reproduce():
    masks = block_masking(64, (14, 14), 75, generator=np.random.default_rng(0))
    assert len({tuple(m.tolist()) for m in masks}) == 64
    again = block_masking(64, (14, 14), 75, generator=np.random.default_rng(0))
    assert torch.equal(masks, again)
    assert not torch.equal(masks, block_masking(64, (14, 14), 75, generator=np.random.default_rng(1)))
    t1 = block_masking(8, (14, 14), 75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, block_masking(8, (14, 14), 75, generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(5)  # no generator: torch's global RNG (what set_seed and DataLoader workers seed)
    g1 = block_masking(8, (14, 14), 75)
    torch.manual_seed(5)
    assert torch.equal(g1, block_masking(8, (14, 14), 75))


def beit_reference_mask(rnd: random.Random, H: int, W: int, target: int, min_area: float = 16,
                        min_aspect: float = 0.3, attempts: int = 10) -> np.ndarray:
    """BEiT's block-wise masking as the paper and DESIGN.md describe it, written cell by cell:
    place rectangles (area ~ U(min_area, remaining budget), aspect log-uniform in [0.3, 1/0.3],
    sides strictly smaller than the grid) that add new patches without exceeding the budget,
    up to 10 tries each, until the budget is met or nothing fits; then, as BEiT v2, mask random
    free cells up to the exact count."""
    grid = [[False] * W for _ in range(H)]
    count = 0
    while count < target:
        budget, added = target - count, 0
        for _ in range(attempts):
            area = rnd.uniform(min_area, budget)
            aspect = math.exp(rnd.uniform(math.log(min_aspect), -math.log(min_aspect)))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if h >= H or w >= W:
                continue
            top, left = rnd.randint(0, H - h), rnd.randint(0, W - w)
            new = [(i, j) for i in range(top, top + h) for j in range(left, left + w) if not grid[i][j]]
            if 0 < len(new) <= budget:
                for i, j in new:
                    grid[i][j] = True
                added = len(new)
                break
        if added == 0:
            break
        count += added
    free = [(i, j) for i in range(H) for j in range(W) if not grid[i][j]]
    for i, j in rnd.sample(free, target - count):
        grid[i][j] = True
    return np.array(grid)


def _statistics(masks) -> np.ndarray:
    """(n, 3): connected masked regions (4-neighbour), largest region's size, masked border cells."""
    rows = []
    for m in masks:
        labels, n = ndimage.label(m)
        rows.append((n, np.bincount(labels.ravel())[1:].max(), m[[0, -1]].sum() + m[1:-1, [0, -1]].sum()))
    return np.array(rows, float)


def test_distribution_matches_beits_generator_on_a_14x14_grid():
    """2,000 masks from each. With the standard errors of the two means combined, a difference
    above 4 of them has probability ~6e-5 under equal distributions; a generator with BEiT's
    rectangles but min_block 8 instead of 16 is caught at z > 6 (plain random masking far beyond)."""
    n = 2000
    rnd = random.Random(0)
    ref = _statistics([beit_reference_mask(rnd, 14, 14, 75) for _ in range(n)])

    def z_scores(masks):
        s = _statistics(masks)
        return np.abs(s.mean(0) - ref.mean(0)) / np.sqrt(s.var(0) / n + ref.var(0) / n)

    ours = block_masking(n, (14, 14), 75, generator=np.random.default_rng(1)).view(n, 14, 14).numpy()
    assert np.all(z_scores(ours) < 4), z_scores(ours)
    smaller_blocks = block_masking(n, (14, 14), 75, min_block=8, generator=np.random.default_rng(1))
    assert z_scores(smaller_blocks.view(n, 14, 14).numpy())[:2].min() > 4
    scattered = random_masking(n, 196, 1 - 75 / 196)[1].bool().view(n, 14, 14).numpy()
    assert z_scores(scattered).min() > 4
