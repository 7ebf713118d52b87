"""Image ops on a batch with one random parameter per image, for augmentation drawn per sample but
applied to the whole batch at once. Hand-written: torchvision's v2 ops take one parameter per
call, so a batch through them gets one crop, one jitter and one blur for every image.

Every function takes float images in [0, 1], ``x`` (N, C, H, W) with C 1 (grey) or 3 (RGB), and
per-image parameters of shape (N,); each matches torchvision's ``v2.functional`` op of the same
name applied image by image with that image's parameter (tests/test_batched_multicrop.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (PIL's are 0.299 0.587 0.114)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """x (N, C, H, W), boxes (N, 4) float pixels (top, left, height, width), flip (N,) bool -> (N, C, size, size).

    Bicubic at the sample points of ``F.resized_crop`` (pixel centres, ``align_corners`` False), with
    the crop mirrored left-right where ``flip``. Two differences, both at the crop's rim: a bicubic
    tap past the crop's edge reads the image there (``F.resized_crop`` repeats the crop's edge), and
    a crop shrunk by ``size`` is not low-pass filtered first (RandomResizedCrop's ``antialias``):
    DINO's small-image crops are resized by under 1.5x either way. Clamped to [0, 1] as a uint8
    image's resize saturates."""
    n, c, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)
    theta = x.new_zeros(n, 2, 3)
    # output coordinate u in [-1, 1] -> input coordinate: the crop's centre plus u times its half-extent
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp_(0, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): torchvision's luma of RGB; a grey image as it is."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(GREY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor (N,), other broadcast to x."""
    f = factor.to(x.dtype).view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, torch.zeros_like(x[:1]), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Towards each image's mean luma."""
    return blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Towards each image's own luma (RGB only: a grey image has no saturation)."""
    return x if x.shape[1] == 1 else blend(x, grey(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 3, H, W) hue, saturation, value, each in [0, 1] (hue in turns)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    flat = chroma == 0
    s = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    c = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / c, (maxc - g) / c, (maxc - b) / c
    # the sector of the largest channel; r wins ties, then g
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([torch.remainder(h / 6.0, 1.0), s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) hue, saturation, value -> RGB (the inverse of ``rgb_to_hsv``)."""
    h, s, v = x.unbind(1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.long() % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    # (r, g, b) of each of the six sectors of the hue circle
    table = torch.stack([torch.stack(rgb, 1) for rgb in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1)  # (N, 6, 3, H, W)
    index = sector.unsqueeze(1).unsqueeze(1).expand(-1, 1, 3, -1, -1)
    return table.gather(1, index).squeeze(1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``factor`` turns, factor in [-0.5, 0.5] (RGB only)."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + factor.to(x.dtype).view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """A Gaussian of std ``sigma`` (N,) pixels per image, ``kernel_size`` taps (odd), reflect padding."""
    n, c, height, width = x.shape
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    kernel = torch.softmax(-0.5 * (taps / sigma.to(x.dtype).view(-1, 1)) ** 2, dim=1)  # (N, k), rows sum to 1
    kernel = kernel.repeat_interleave(c, 0)  # one per channel of each image: (N * C, k)
    y = F.pad(x.reshape(1, n * c, height, width), [kernel_size // 2] * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert every value at or above ``threshold`` (in [0, 1])."""
    return torch.where(x >= threshold, 1 - x, x)
