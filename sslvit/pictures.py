"""Picture grids written by runs and probes: one row per sample, one titled column per view,
a one-line caption above (run, epoch, the numbers the picture goes with).

Every tile is drawn ``CELL_PX`` pixels square whatever the input size (16 px digits and 224 px
photos alike), small inputs enlarged by nearest neighbour so each pixel stays a sharp block.
Heat maps (attention) are overlaid on their image with a colour bar; a tile may carry a short
coloured note under it (k-NN neighbours: class and similarity). matplotlib draws on its Agg
canvas (no display) and is imported only here, when a picture is drawn."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from sslvit.data.transforms import denormalize
from sslvit.files import save_figure_atomic

CELL_PX = 128  # side of every tile in the written PNG
DPI = 100
GAP_PX, MARGIN_PX = 6, 10
TITLE_PX = 38  # up to two lines of column title
NOTE_PX = 16  # a note line under each tile, when there are notes
COLORBAR_PX = 110  # the colour bar, its ticks and its two-line label, when a column is a heat map
CAPTION_LINE_PX = 18
HEAT_LABEL = "attention: 0 = the map's min, 1 = its max"

Note = tuple[str, str]  # (text, colour)


def grid_size_px(rows: int, cols: int, caption_lines: int = 1, notes: bool = False,
                 heat: bool = False) -> tuple[int, int]:
    """-> (width, height) in pixels of a grid ``tile_figure`` draws with these parts."""
    width = 2 * MARGIN_PX + cols * CELL_PX + (cols - 1) * GAP_PX + (COLORBAR_PX if heat else 0)
    height = (2 * MARGIN_PX + caption_lines * CAPTION_LINE_PX + TITLE_PX
              + rows * (CELL_PX + (NOTE_PX if notes else 0)) + (rows - 1) * GAP_PX)
    return width, height


def _caption_lines(caption: str, width_px: int) -> list[str]:
    return textwrap.wrap(caption, max(20, width_px // 7)) or [""]  # ~7 px per character at 10 pt


def tile_figure(columns: dict[str, np.ndarray], caption: str, notes: Optional[Sequence[Sequence[Note]]] = None,
                background: Optional[str] = None, heat_label: str = HEAT_LABEL):
    """A matplotlib ``Figure`` of the grid.

    columns: title -> (B, H, W, 3) RGB in [0, 1], or (B, h, w) heat map in [0, 1] drawn over
    column ``background``'s image in grey with a colour bar; notes[row][col]: (text, colour)
    under that tile."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    titles = list(columns)
    rows, cols = len(next(iter(columns.values()))), len(titles)
    heat = any(v.ndim == 3 for v in columns.values())
    width, _ = grid_size_px(rows, cols, 1, notes is not None, heat)
    lines = _caption_lines(caption, width)
    width, height = grid_size_px(rows, cols, len(lines), notes is not None, heat)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    fig.text(MARGIN_PX / width, 1 - MARGIN_PX / height, "\n".join(lines), ha="left", va="top", fontsize=10,
             linespacing=1.3)
    top = MARGIN_PX + len(lines) * CAPTION_LINE_PX + TITLE_PX
    row_px = CELL_PX + (NOTE_PX if notes is not None else 0) + GAP_PX
    for r in range(rows):
        for c, title in enumerate(titles):
            x0, y0 = MARGIN_PX + c * (CELL_PX + GAP_PX), top + r * row_px
            ax = fig.add_axes((x0 / width, 1 - (y0 + CELL_PX) / height, CELL_PX / width, CELL_PX / height))
            ax.set_xticks([]), ax.set_yticks([])
            _draw_tile(ax, columns[title][r], columns[background][r] if background else None)
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(title, 20)[:2]), fontsize=9, pad=4)
            if notes is not None:
                text, colour = notes[r][c]
                ax.text(0.5, -0.02, text, transform=ax.transAxes, ha="center", va="top", fontsize=8, color=colour)
    if heat:
        cax = fig.add_axes(((width - COLORBAR_PX + 10) / width, 1 - (top + min(rows, 2) * CELL_PX) / height,
                            12 / width, min(rows, 2) * CELL_PX / height))
        fig.colorbar(ScalarMappable(Normalize(0, 1), "inferno"), cax=cax).set_label(
            "\n".join(textwrap.wrap(heat_label, 26)), fontsize=8)
        cax.tick_params(labelsize=7)
    return fig


def _draw_tile(ax, tile: np.ndarray, under: Optional[np.ndarray]) -> None:
    """One tile: RGB as it is, a heat map over ``under`` in grey; nearest neighbour when enlarged."""
    size = tile.shape[0] if under is None else under.shape[0]
    interpolation = "nearest" if size <= CELL_PX else "antialiased"
    if tile.ndim == 3:
        ax.imshow(np.clip(tile, 0, 1), interpolation=interpolation)
        return
    h, w = under.shape[:2]
    ax.imshow(under.mean(-1), cmap="gray", vmin=0, vmax=1, interpolation=interpolation)
    # the heat map's own cells stretched over the image: one block per patch, as DINO draws it
    ax.imshow(tile, cmap="inferno", vmin=0, vmax=1, alpha=0.6, interpolation="nearest",
              extent=(-0.5, w - 0.5, h - 0.5, -0.5))


def to_rgb(x: torch.Tensor, normalized: bool = True) -> np.ndarray:
    """(B, 3, H, W) -> (B, H, W, 3) in [0, 1]; ``normalized``: undo the ImageNet normalisation."""
    x = x.detach().float().cpu()
    x = denormalize(x) if normalized else x.clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def save_columns(columns: dict[str, torch.Tensor], path: Path, normalized: Optional[dict[str, bool]] = None,
                 caption: str = "", heat_label: str = HEAT_LABEL) -> None:
    """columns: name -> (B, 3, H, W) image (normalised unless ``normalized[name]`` is False) or
    (B, h, w) heat map in [0, 1], drawn over the first column. Written atomically as PNG."""
    normalized = normalized or {}
    arrays = {k: to_rgb(v, normalized.get(k, True)) if v.ndim == 4 else v.detach().float().cpu().numpy()
              for k, v in columns.items()}
    first = next(iter(arrays))
    fig = tile_figure(arrays, caption, background=first if any(a.ndim == 3 for a in arrays.values()) else None,
                      heat_label=heat_label)
    save_figure_atomic(fig, path, DPI)
