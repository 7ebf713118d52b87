"""DINO's multi-crop with its random parameters drawn per image and its pixels made per batch
(``crops.batched``): ``MultiCropDraw`` runs in the data set, under the sample's keyed generator,
and returns the image untouched beside its views' parameters; ``BatchedMultiCropCollate`` makes
every crop of the batch in a few batched ops (``batch_ops``). Each parameter has the distribution
``MultiCropTransform`` draws it from, and the ops run in its order (the two differences, at a
crop's rim and when a crop shrinks, are ``batch_ops.resized_crop``'s); on 2 CPU cores a quarter
of the time of a small DINO step went to cropping 4 views an image one op at a time
(benchmarks/crop_cost.py)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from sslvit.data import batch_ops
from sslvit.data.multicrop import MultiCropConfig, blur_kernel_size
from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# the columns of a view's parameters
TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER, BRIGHT, CONTRAST, SAT, HUE = range(10)
ORDER = slice(10, 14)  # the jitter's op order: a permutation of (bright, contrast, sat, hue)
GREY_ON, BLUR_ON, SIGMA, SOLAR_ON = 14, 15, 16, 17
COLUMNS = 18
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratios
TRIES = 10  # RandomResizedCrop's draws before its fallback


def crop_boxes(height: int, width: int, scale: np.ndarray, u: np.ndarray, tries: int = TRIES) -> np.ndarray:
    """scale (V, 2) area fractions (low, high), u (V, 2 * tries + 2) uniforms in [0, 1) -> boxes
    (V, 4) (top, left, h, w), drawn as ``RandomResizedCrop``'s: up to ``tries`` areas and log-uniform
    aspect ratios, the first that fits, else the whole image clipped to the ratios, centred.
    numpy: a few dozen ops on (V, 10) arrays cost a tenth of torch's per-op overhead."""
    v = len(scale)
    area = height * width
    target = area * (scale[:, :1] + (scale[:, 1:] - scale[:, :1]) * u[:, :tries])
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = np.exp(lo + (hi - lo) * u[:, tries:2 * tries])
    w, h = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(1)
    rows = np.arange(v)
    found = fits.any(1)
    fw, fh = _fallback(height, width)
    w, h = np.where(found, w[rows, first], fw), np.where(found, h[rows, first], fh)
    top = np.where(found, np.floor(u[:, -2] * (height - h + 1)), np.floor((height - h) / 2))
    left = np.where(found, np.floor(u[:, -1] * (width - w + 1)), np.floor((width - w) / 2))
    return np.stack([top, left, h, w], 1)


def _fallback(height: int, width: int) -> tuple[float, float]:
    """(w, h) of RandomResizedCrop's fallback: the whole image, clipped to the ratio range."""
    ratio = width / height
    if ratio < RATIO[0]:
        return float(width), float(round(width / RATIO[0]))
    if ratio > RATIO[1]:
        return float(round(height * RATIO[1])), float(height)
    return float(width), float(height)


class MultiCropDraw:
    """PIL image -> (uint8 image (C, H, W), parameters (V, COLUMNS)) for 2 global views and
    ``local_number`` local ones; C is 1 when every crop is grey (``grayscale_p`` 1), else 3.

    Blur p 1.0 / 0.1 / 0.5 (global 1, global 2, locals) and solarisation p 0.2 on global 2, as
    ``MultiCropTransform`` (DINO's ``DataAugmentationDINO``); flips with p 0.5 when ``hflip``."""

    def __init__(self, cfg: MultiCropConfig, hflip: bool = True):
        self.cfg, self.hflip = cfg, hflip
        self.scale = np.array([cfg.global_scale] * 2 + [cfg.local_scale] * cfg.local_number, dtype=np.float64)
        self.blur_p = np.array([1.0, 0.1] + [0.5] * cfg.local_number)
        self.solar_p = np.array([0.0, 0.2] + [0.0] * cfg.local_number)
        self.grey_first = cfg.grayscale_p >= 1

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        """img: a PIL image or a uint8 tensor (C, H, W)."""
        from torchvision.transforms.v2 import functional as TF

        if isinstance(img, torch.Tensor):
            x = TF.rgb_to_grayscale(img) if self.grey_first and img.shape[0] == 3 else img
        else:  # PIL's own grey, as MultiCropTransform's first op takes it
            x = TF.pil_to_tensor(img.convert("L" if self.grey_first else "RGB"))
        return x, self.draw(x.shape[-2], x.shape[-1])

    def draw(self, height: int, width: int) -> torch.Tensor:
        """-> (V, COLUMNS) parameters of every view of one image of this size, from one ``torch.rand``
        (the generator the data set keys by sample)."""
        cfg, v = self.cfg, len(self.scale)
        u = torch.rand(v, 2 * TRIES + 2 + 14, dtype=torch.float64).numpy()  # the box's, then 14 for the rest
        boxes, u = u[:, :2 * TRIES + 2], u[:, 2 * TRIES + 2:]
        p = np.zeros((v, COLUMNS))
        p[:, TOP:WIDTH + 1] = crop_boxes(height, width, self.scale, boxes)
        p[:, FLIP] = u[:, 0] < 0.5 if self.hflip else 0.0
        p[:, JITTER] = u[:, 1] < cfg.color_jitter_p
        b, c, s, h = cfg.color_jitter
        if self.grey_first:
            s = h = 0.0
        for column, amount, f in ((BRIGHT, b, u[:, 2]), (CONTRAST, c, u[:, 3]), (SAT, s, u[:, 4])):
            p[:, column] = max(0.0, 1 - amount) + (1 + amount - max(0.0, 1 - amount)) * f
        p[:, HUE] = -h + 2 * h * u[:, 5]
        p[:, ORDER] = np.argsort(u[:, 6:10], axis=1)  # a uniform permutation per view
        p[:, GREY_ON] = u[:, 10] < cfg.grayscale_p if 0 < cfg.grayscale_p < 1 else 0.0
        p[:, BLUR_ON] = u[:, 11] < self.blur_p
        p[:, SIGMA] = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[:, 12]
        p[:, SOLAR_ON] = u[:, 13] < self.solar_p
        return torch.from_numpy(p).float()


class BatchedMultiCropCollate:
    """[((image (C, H, W) uint8, parameters (V, COLUMNS)), label, skipped)] * B -> (groups, labels (B,), skipped (B,)),
    as ``multicrop_collate`` lays them out: (2B, 3, G, G) global crops, then (nB, 3, L, L) local
    ones, view-major (view 0 of every image, then view 1, ...). Images of several sizes are
    cropped size by size."""

    def __init__(self, global_size: int, cfg: MultiCropConfig):
        self.cfg = cfg
        sizes = [global_size] * 2 + [cfg.local_size] * cfg.local_number
        # (first view, its number of views, crop size) of each run of views of one size: the output groups
        self.groups, first = [], 0
        for size, run in itertools.groupby(sizes):
            count = len(list(run))
            self.groups.append((first, count, size))
            first += count
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, samples):
        images = [s[0][0] for s in samples]
        params = torch.stack([s[0][1] for s in samples], 1)  # (V, B, COLUMNS)
        groups = []
        for first, count, size in self.groups:
            p = params[first:first + count].reshape(-1, COLUMNS)  # view-major rows
            groups.append(self.views(_crops(images, p, count, size), p))
        labels = torch.tensor([s[1] for s in samples])
        skipped = torch.tensor([s[2] for s in samples])
        return groups, labels, skipped

    def views(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Crops x (N, C, S, S) in [0, 1] with their rows of parameters p (N, COLUMNS) -> the
        normalised views (N, 3, S, S): jitter, random grey, blur, solarise, as ``MultiCropTransform``."""
        cfg = self.cfg
        x = self.jitter(x, p)
        if 0 < cfg.grayscale_p < 1 and x.shape[1] == 3:
            x = _where(p[:, GREY_ON] > 0, lambda: batch_ops.grey(x).expand_as(x), x)
        if cfg.blur_sigma[1] > 0:
            kernel = blur_kernel_size(x.shape[-1], cfg.blur_sigma[1])
            x = _where(p[:, BLUR_ON] > 0, lambda: batch_ops.gaussian_blur(x, p[:, SIGMA].clamp_min(1e-6), kernel), x)
        x = _where(p[:, SOLAR_ON] > 0, lambda: batch_ops.solarize(x, 128 / 255), x)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def jitter(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """ColorJitter where p[:, JITTER], its four ops in each view's own order (p[:, ORDER])."""
        b, c, s, h = self.cfg.color_jitter
        if x.shape[1] == 1:
            s = h = 0.0  # a grey image has no saturation or hue
        ops = [(BRIGHT, batch_ops.adjust_brightness, b), (CONTRAST, batch_ops.adjust_contrast, c),
               (SAT, batch_ops.adjust_saturation, s), (HUE, batch_ops.adjust_hue, h)]
        on, order = p[:, JITTER] > 0, p[:, ORDER].long()
        for position in range(4):
            for index, (column, op, amount) in enumerate(ops):
                if amount:
                    x = _where(on & (order[:, position] == index), lambda: op(x, p[:, column]), x)
        return x


def _where(on: torch.Tensor, make, x: torch.Tensor) -> torch.Tensor:
    """x with the rows where ``on`` (N,) bool replaced by ``make()``'s; ``make`` not called when none are."""
    if not on.any():
        return x
    return torch.where(on.view(-1, 1, 1, 1), make(), x)


def _crops(images: list[torch.Tensor], p: torch.Tensor, views: int, size: int) -> torch.Tensor:
    """``views`` crops of each of the B images, rows view-major as p (views * B, COLUMNS)
    -> (views * B, C, size, size)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape), []).append(i)
    out = torch.empty(len(p), images[0].shape[0], size, size)
    for index in by_shape.values():
        x = torch.stack([images[i] for i in index]).float().div_(255)
        rows = torch.tensor([v * len(images) + i for v in range(views) for i in index])
        out[rows] = batch_ops.resized_crop(x.repeat(views, 1, 1, 1), p[rows, TOP:WIDTH + 1], p[rows, FLIP] > 0, size)
    return out
