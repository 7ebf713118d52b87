"""Image folders: any tree of images; labels from the first-level sub-folder names when
every image sits in one (ImageNet layout), else unlabelled (-1)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from sslvit.data.decode import to_rgb

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VAL_FRACTION = 0.2  # held out of a folder without train/ and val/: the probes' queries, never trained on
SPLIT_SEED = 0  # fixed, so the folder reader and the shard writer hold out the same images


class DataError(ValueError):
    """The data a user pointed at cannot be used; the message names it and the fix."""


def scan_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """-> (image paths sorted, labels, class names). Raises DataError for a missing or empty folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Data folder '{root}' does not exist; pass --data with a folder of images "
                        "(or 'cluttered' or 'digits' for the embedded sets).")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not paths:
        if any(root.glob("*.tar")):
            raise DataError(f"Data folder '{root}' holds tar shards but no index (train.json), and sslvit reads shards "
                            "through their index; write them with `python -m sslvit.data.shards IMAGES OUT`, which "
                            "writes train.json (and val.json) beside them.")
        heic = next((p for p in root.rglob("*") if p.suffix.lower() in (".heic", ".heif")), None)
        if heic is not None:  # an iPhone's photos: Pillow reads none of them without a plugin
            raise DataError(f"Data folder '{root}' holds HEIC photos ('{heic.name}'), which Pillow cannot read; "
                            "convert them to JPEG first (e.g. `heif-convert`, or `pip install pillow-heif`).")
        raise DataError(f"Data folder '{root}' holds no images ({', '.join(IMG_EXTENSIONS)}); "
                        "point --data at the folder that contains them.")
    rel_parts = [p.relative_to(root).parts for p in paths]
    if all(len(parts) >= 2 for parts in rel_parts):
        classes = sorted({parts[0] for parts in rel_parts})
        index = {c: i for i, c in enumerate(classes)}
        return paths, [index[parts[0]] for parts in rel_parts], classes
    return paths, [-1] * len(paths), []


def load_rgb(path: Path, read_for: Optional[int] = None) -> Image.Image | None:
    """The image as upright 8-bit RGB (``to_rgb``), or None (with a warning) when it cannot be decoded.
    ``read_for``: see ``to_rgb``."""
    try:
        with Image.open(path) as img:
            return to_rgb(img, read_for)
    except Exception as e:  # PIL raises many types for corrupt files
        warnings.warn(f"Skipping unreadable image '{path}' ({e.__class__.__name__}).", stacklevel=2)
        return None


def held_out_split(n: int, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """-> (train, val): the sample numbers (into ``scan_folder``'s sorted paths) of the two parts of
    a folder without train/ and val/, each sorted. val is the first round(n * val_fraction), at
    least one, of a seeded permutation; the folder reader and the shard writer both use this."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
