"""``tokenizer_codebook.png``: the most used codes of a pixel tokenizer, each drawn as the patch
it stands for, with its share of the fitted patches under it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslvit.files import save_figure_atomic
from sslvit.pictures import DPI, tile_figure
from sslvit.tokenizers.pixel import PixelTokenizer

COLS, ROWS = 8, 4  # the 32 most used codes


def code_tiles(tok: PixelTokenizer, codes: torch.Tensor) -> np.ndarray:
    """codes (K,) -> (K, s, s, 3) in [0, 1]: each code vector (per-patch normalised pixels) with
    its own min-max stretch, as filters are drawn (a code carries a pattern, not a brightness)."""
    s, c = tok.pixel_size, tok.code_chans
    v = tok.codebook[codes].float().reshape(len(codes), c, s, s)
    lo, hi = v.amin((1, 2, 3), keepdim=True), v.amax((1, 2, 3), keepdim=True)
    v = ((v - lo) / (hi - lo).clamp_min(1e-6)).permute(0, 2, 3, 1)
    return (v.expand(-1, -1, -1, 3) if c == 1 else v).numpy()


def save_codebook_picture(tok: PixelTokenizer, ids: torch.Tensor, path: Path, caption: str) -> Path:
    """ids: the codes of the fitted patches (any shape). The 32 most used codes in rows of 8."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=tok.vocab)
    order = counts.argsort(descending=True)[:COLS * ROWS]
    order = order[counts[order] > 0]  # codes no fitted patch chose show nothing of the data
    cols = min(COLS, len(order))
    rows = len(order) // cols
    order = order[:rows * cols]
    tiles = code_tiles(tok, order).reshape(rows, cols, tok.pixel_size, tok.pixel_size, 3)
    share = (counts[order].double() / counts.sum()).reshape(rows, cols)
    columns = {f"ranks {j + 1}, {j + 1 + cols}, ..." if rows > 1 else f"rank {j + 1}": tiles[:, j] for j in range(cols)}
    notes = [[(f"code {int(order[r * cols + j])}: {100 * share[r, j]:.1f}%", "black") for j in range(cols)]
             for r in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)  # a run's folder may not exist yet when its tokenizer is fitted
    save_figure_atomic(tile_figure(columns, caption, notes=notes), path, DPI)
    return path
