"""Picture grids written by runs."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from sslvit.data.transforms import denormalize
from sslvit.files import atomic_path


def save_columns(columns: dict[str, torch.Tensor], path: Path, normalized: dict[str, bool] | None = None) -> None:
    """columns: name -> (B, 3, H, W). One row per sample, one column per name, left to right."""
    normalized = normalized or {}
    cols = [denormalize(v.float().cpu()) if normalized.get(k, True) else v.float().cpu().clamp(0, 1)
            for k, v in columns.items()]
    scale = max(1, 96 // cols[0].shape[-1])  # small images (digits) are enlarged to be legible
    if scale > 1:
        cols = [torch.nn.functional.interpolate(c, scale_factor=scale, mode="nearest") for c in cols]
    B = cols[0].shape[0]
    tiles = torch.stack(cols, dim=1).reshape(B * len(cols), *cols[0].shape[1:])  # row-major: sample, column
    grid = make_grid(tiles, nrow=len(cols), padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        save_image(grid, str(tmp), format="png")
