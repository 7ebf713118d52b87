"""The embedded default data: scikit-learn's digits (1,797 real 8x8 handwritten digits,
10 classes), shipped inside scikit-learn, so nothing is downloaded."""
from __future__ import annotations

import numpy as np
from PIL import Image

NUM_VAL = 297  # fixed split: 1,500 train / 297 val


def digits_split(split: str, img_size: int) -> tuple[list[Image.Image], list[int]]:
    """RGB PIL images (img_size x img_size, white digit on black) and labels of a fixed split."""
    if split not in ("train", "val"):
        raise ValueError(f"split '{split}' is unknown; use 'train' or 'val'.")
    from sklearn.datasets import load_digits  # here: scikit-learn takes a second to import

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    idx = order[NUM_VAL:] if split == "train" else order[:NUM_VAL]
    images = []
    for i in idx:
        gray = (digits.images[i] / 16.0 * 255.0).round().astype(np.uint8)  # values are 0..16
        img = Image.fromarray(gray, mode="L").resize((img_size, img_size), Image.BICUBIC)
        images.append(img.convert("RGB"))
    return images, [int(digits.target[i]) for i in idx]
