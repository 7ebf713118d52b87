"""Decoded images as 8-bit RGB the way a viewer shows them: EXIF orientation applied, 16-bit and
float images scaled to 0-255 (PIL's ``convert("RGB")`` clips them: a 16-bit PNG comes out
nearly all white). Every reader (folders and shards) goes through ``to_rgb``."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageOps

WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
DRAFT_FACTOR = 4  # a JPEG read for S px crops is decoded at the smallest DCT scale whose short side is >= 4 S


def draft(img: Image.Image, short_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while its short side stays at
    least ``short_side``; other formats are untouched. A phone photo read for a 64 px crop decodes in
    14 ms instead of 62 (and its RandomResizedCrop costs 1.5 ms instead of 30); at 4x the crop side,
    even RandomResizedCrop's smallest crops (MAE's 0.2 of the area) keep 1.8x the pixels they need."""
    img.draft(img.mode, (short_side, short_side))


def to_rgb(img: Image.Image, read_for: Optional[int] = None) -> Image.Image:
    """An opened PIL image -> an 8-bit RGB image, upright (EXIF orientation applied). ``read_for``
    S: the image is read for S px crops, so a large JPEG decodes smaller (``draft`` to DRAFT_FACTOR S).

    16-bit integer images (``I;16*``, and ``I`` within 0-65535) are scaled by 255/65535; wider
    ``I`` images by their own maximum; float images (``F``) within [0, 1] by 255, others clipped
    to 0-255."""
    if read_for:
        draft(img, DRAFT_FACTOR * read_for)
    img = ImageOps.exif_transpose(img)  # a copy, upright; the image itself when no tag turns it
    if img.mode in WIDE_INT_MODES or img.mode == "F":
        img = Image.fromarray(_to_uint8(np.asarray(img), img.mode), mode="L")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    arr = arr.astype(np.float64)
    if mode == "F":
        scale = 255.0 if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0 else 1.0
    else:
        top = arr.max() if arr.size else 0.0
        scale = 255.0 / (65535.0 if top <= 65535 else top)
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
