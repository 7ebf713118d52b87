"""The embedded set where pixels are not enough: scikit-learn's real 8x8 digits, each drawn
several times at a seeded random scale (18-26 px), rotation, position (up to 4 px off centre)
and colour on a 32 px canvas with a textured background and clutter cut from other digits (the
"cluttered MNIST" idea of Mnih et al. 2014, "Recurrent Models of Visual Attention"). Nothing is
downloaded; the build takes a few seconds and is cached.

Spec: ``cluttered`` or ``cluttered:seed=S,strength=X`` (another variant of the generator: the
seed draws other nuisances, strength scales rotation, clutter and texture). The train/val
split is by source digit (the digits' own fixed split), so no drawing of a val digit is in
train.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from sslvit.data.digits import NUM_VAL
from sslvit.files import atomic_path, cache_folder

NAME = "cluttered"
CANVAS = 32
COPIES = {"train": 3, "val": 2}  # drawings per source digit: 4,500 train and 594 val images
CLUTTER, CLUTTER_ALPHA = 2, 0.7  # pieces per image at strength 1, and their opacity (fainter than the digit)
# glyph side in px (low, high + 1) and how far (px) its corner strays from the centred place. Version 2
# drew 13-20 px glyphs anywhere: a ViT-Ti/8 trained with labels for 20 epochs reached 21 % (43 % here then)
SIZES, JITTER = (18, 27), 4
VERSION = 3  # bump when the drawing changes, so old caches are not reused


def parse_spec(data: str) -> dict | None:
    """``{'seed': int, 'strength': float}`` for a cluttered spec, None for anything else."""
    name, _, options = data.partition(":")
    if name != NAME:
        return None
    params = {"seed": 0, "strength": 1.0}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in params:
            raise ValueError(f"'{data}': option '{key}' is unknown; cluttered takes seed=INT and strength=FLOAT, "
                             "e.g. cluttered:seed=1,strength=1.25.")
        try:
            params[key] = type(params[key])(value)
        except ValueError:
            raise ValueError(f"'{data}': {key}={value!r} is not a number; e.g. cluttered:seed=1,strength=1.25.") \
                from None
    if not 0.0 <= params["strength"] <= 3.0:
        raise ValueError(f"'{data}': strength {params['strength']} is outside 0..3; 1 is the default set.")
    return params


def _glyph(digit: np.ndarray, size: int, angle: float) -> np.ndarray:
    """(size, size) float alpha in 0..1 of an 8x8 digit (values 0..16), scaled and rotated."""
    img = Image.fromarray((digit / 16.0 * 255.0).astype(np.uint8), mode="L")
    img = img.resize((size, size), Image.BICUBIC).rotate(angle, resample=Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _paste(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, top: int, left: int) -> None:
    """Alpha-blend ``colour`` into ``canvas`` (H, W, 3) at (top, left) with ``alpha`` (h, w), clipped."""
    h, w = alpha.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
    if t1 <= t0 or l1 <= l0:
        return
    a = alpha[t0 - top:t1 - top, l0 - left:l1 - left, None]
    canvas[t0:t1, l0:l1] = canvas[t0:t1, l0:l1] * (1 - a) + colour * a


def _background(rng: np.random.Generator, strength: float) -> np.ndarray:
    """(CANVAS, CANVAS, 3): a dark random colour with low-frequency texture and pixel noise."""
    base = rng.uniform(0.0, 0.35, size=3).astype(np.float32)
    coarse = rng.normal(0.0, 1.0, size=(4, 4, 3)).astype(np.float32)
    texture = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((CANVAS, CANVAS), Image.BICUBIC))
                        for c in range(3)], axis=-1)
    noise = rng.normal(0.0, 1.0, size=(CANVAS, CANVAS, 3)).astype(np.float32)
    return base + 0.12 * strength * texture + 0.05 * strength * noise


def draw(digit: np.ndarray, others: np.ndarray, rng: np.random.Generator, strength: float,
         pose_rng: np.random.Generator | None = None) -> np.ndarray:
    """One (CANVAS, CANVAS, 3) uint8 image of ``digit`` (8, 8) among fragments of ``others`` (M, 8, 8).
    ``pose_rng``: the glyph's size, rotation and place from it (the same generator state, the same
    pose), the background, colour and clutter from ``rng``; None: everything from ``rng``."""
    pose_rng = rng if pose_rng is None else pose_rng
    canvas = _background(rng, strength)
    colour = rng.uniform(0.55, 1.0, size=3).astype(np.float32)  # the digit's and its clutter's colour
    colour[rng.integers(3)] = 1.0  # one bright channel: the digit stays visible on any background
    for _ in range(int(round(CLUTTER * strength))):  # clutter: 7 px pieces of other digits in the digit's colour
        piece = _glyph(others[rng.integers(len(others))], int(rng.integers(12, 21)), rng.uniform(-180, 180))
        t, l = rng.integers(0, piece.shape[0] - 7, size=2)
        _paste(canvas, CLUTTER_ALPHA * piece[t:t + 7, l:l + 7], colour, *rng.integers(-2, CANVAS - 5, size=2))
    size = int(pose_rng.integers(*SIZES))
    glyph = _glyph(digit, size, pose_rng.uniform(-20, 20) * strength)
    centre = (CANVAS - size) // 2
    _paste(canvas, glyph, colour, *np.clip(centre + pose_rng.integers(-JITTER, JITTER + 1, size=2), 0, CANVAS - size))
    return (np.clip(canvas, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def sources(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's source digits (M, 8, 8), values 0..16, and their labels (M,): the digits' own
    fixed split. They are also the split's clutter, so no val stroke is in a train image."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    chosen = order[NUM_VAL:] if split == "train" else order[:NUM_VAL]
    return digits.images[chosen], digits.target[chosen].astype(np.int64)


def build(split: str, seed: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, CANVAS, CANVAS, 3) uint8 images and (N,) labels of one split of one variant."""
    pool, targets = sources(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images = [draw(digit, pool, rng, strength) for _copy in range(COPIES[split]) for digit in pool]
    return np.stack(images), np.tile(targets, COPIES[split])


def cache_file(split: str, seed: int, strength: float) -> Path:
    root = cache_folder()
    key = hashlib.sha1(f"{VERSION}-{split}-{seed}-{strength!r}".encode()).hexdigest()[:12]
    return root / f"{NAME}-{split}-{key}.npz"


def cluttered_split(split: str, img_size: int, seed: int = 0, strength: float = 1.0):
    """RGB PIL images (img_size px) and labels of one split, built once and cached as .npz."""
    if split not in ("train", "val"):
        raise ValueError(f"split '{split}' is unknown; use 'train' or 'val'.")
    file = cache_file(split, seed, strength)
    try:
        with np.load(file) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError):  # not built yet, or a damaged cache: build again
        images, labels = build(split, seed, strength)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(file) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, images=images, labels=labels)
        except OSError as e:  # a cache only saves seconds: a read-only or full home still runs
            warnings.warn(f"the {NAME} set could not be cached in '{file.parent}' ({e.strerror or e}); it is built "
                          "again at each run (set SSLVIT_CACHE to a folder you can write to).", stacklevel=2)
    pil = [Image.fromarray(a) for a in images]
    if img_size != CANVAS:
        pil = [p.resize((img_size, img_size), Image.BICUBIC) for p in pil]
    return pil, labels.tolist()
