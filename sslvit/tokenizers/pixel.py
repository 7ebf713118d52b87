"""Pixel tokenizer: k-means over per-patch-normalised patch pixels (faiss).

Each P x P patch is average-pooled to ``pixel_size`` x ``pixel_size`` (BEiT's DALL-E tokenizer
also sees the image at half resolution: 112 px for a 224 px input) and normalised by its own
mean and variance, as MAE's ``norm_pix_loss`` targets; k-means over these vectors is the codebook.
A code is then a local pattern (an edge, a blob, a gradient) regardless of brightness and contrast.
Normalised over all its channels, a patch keeps its hue, so on colourful images most codes are
colours; ``grey=True`` quantises each patch's luma instead, and the codes are shapes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sslvit.config import ConfigError
from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, grey_to_normalised_rgb, luma
from sslvit.tokenizers.base import Tokenizer

# Larger than MAE's 1e-6: a nearly flat patch (sensor noise, JPEG ringing) stays a near-zero
# vector close to the "flat" code instead of its noise being blown up to unit variance.
PATCH_EPS = 1e-2


class PixelTokenizer(Tokenizer):
    """``vectors(imgs (B, C, H, W))`` -> (B, N, C * s * s): pooled, per-patch-normalised pixels
    (C = 1 with ``grey``: the luma)."""

    kind = "pixel"

    def __init__(self, vocab: int, patch_size: int, pixel_size: int = 8, in_chans: int = 3, eps: float = PATCH_EPS,
                 grey: bool = False):
        s = min(pixel_size, patch_size)
        if s < 1 or patch_size % s:
            raise ConfigError(f"tokenizer pixel_size {pixel_size} must divide the patch size {patch_size}; "
                              f"use one of {[d for d in range(1, patch_size + 1) if patch_size % d == 0]}.")
        if grey and in_chans != 3:
            raise ConfigError(f"tokenizer grey needs RGB images (got {in_chans} channels); leave grey off.")
        self.code_chans = 1 if grey else in_chans  # channels of a code vector
        super().__init__(vocab, self.code_chans * s * s, patch_size)
        self.pixel_size, self.in_chans, self.eps, self.grey = s, in_chans, eps, grey

    def header(self) -> dict:
        return {**super().header(), "pixel_size": self.pixel_size, "in_chans": self.in_chans, "grey": self.grey,
                "normalisation": {"image": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                                  "patch": "(x - mean) / sqrt(var + eps) over each pooled patch", "eps": self.eps}}

    @classmethod
    def from_header(cls, header: dict) -> "PixelTokenizer":
        return cls(header["vocab"], header["patch_size"], header["pixel_size"], header["in_chans"],
                   header["normalisation"]["eps"], header.get("grey", False))  # files before grey: colour

    def patch_pixels(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C * s * s), each patch average-pooled to s x s, raster order
        (C = 1 with ``grey``)."""
        k = self.patch_size // self.pixel_size
        imgs = luma(imgs) if self.grey else imgs
        x = F.avg_pool2d(imgs, k) if k > 1 else imgs
        return F.unfold(x, self.pixel_size, stride=self.pixel_size).transpose(1, 2)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(-1, keepdim=True), (x.var(-1, keepdim=True) + self.eps).sqrt()

    def vectors(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.patch_pixels(imgs)
        mean, std = self._stats(x)
        return (x - mean) / std

    def draw(self, ids: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """Each patch drawn as its code's centroid, given back the patch's own mean and contrast
        (what the image looks like through the tokenizer), in [0, 1]."""
        x = self.patch_pixels(imgs.float())
        mean, std = self._stats(x)
        k = self.patch_size // self.pixel_size
        B, _, H, W = imgs.shape
        out = F.fold((self.codebook[ids] * std + mean).transpose(1, 2), (H // k, W // k), self.pixel_size,
                     stride=self.pixel_size)
        out = F.interpolate(out, scale_factor=k, mode="nearest") if k > 1 else out
        return denormalize(grey_to_normalised_rgb(out) if self.grey else out)
