"""hMLP patch stem (Touvron et al. 2022, "Three things everyone should know about
Vision Transformers"), shaped to plug into timm's ``VisionTransformer(embed_layer=...)``.

Every convolution has kernel == stride, so each output token is a function of its own
P x P patch only. The DeiT reference normalises after each convolution with (Sync)BatchNorm;
batch statistics in train mode would mix pixels across patches and images (a masked patch's
pixels would shift how visible patches are normalised), so this stem has no norm after its
first two convolutions (``inner_norm='none'``, the default) and a per-position LayerNorm over
channels (timm's ``LayerNorm2d``) on its output. It has no running state and no batch
coupling, so the stem is strictly patch-independent in train and eval mode alike, needs no
process group, and masking before or after the stem is the same thing.

``inner_norm='layer'`` puts a per-position LayerNorm after the first two convolutions too
(sslvit's stem before 2026-12, kept to read its backbones). It is no stand-in for BatchNorm:
it rescales each 2x2 pixel block's response to unit spread, so flat background and noise
weigh as much as strokes, and a ViT learns much slower from it (``BackboneConfig.stem_norm``): a
ViT-Ti/8 trained with labels on ``cluttered`` for 10 epochs reached 31.5 % with it, 45.8 % without.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Format, LayerNorm2d, nchw_to, to_2tuple

from sslvit.models.backbone_config import STEM_NORMS, hmlp_kernels


class HMLPStem(nn.Module):
    """Hierarchical MLP stem: (B, C, H, W) -> (B, N, D), or NHWC when ``output_fmt='NHWC'``.

    Accepts timm's ``PatchEmbed`` constructor arguments (extra ones are ignored) and exposes
    ``num_patches``, ``grid_size``, ``feat_ratio()``, ``dynamic_feat_size()`` and
    ``set_input_size()`` like it. ``SSLViT.embed_patches`` runs ``proj`` on cut-out patches,
    which is how MIM objectives run the stem on the visible patches only.
    """

    output_fmt: Format

    def __init__(
        self,
        img_size: Optional[Union[int, Tuple[int, int]]] = 224,
        patch_size: Union[int, Tuple[int, int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer=None,
        flatten: bool = True,
        output_fmt: Optional[str] = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        inner_norm: str = "none",
        device=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"hMLP stem needs square patches (got {self.patch_size}).")
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.img_size, self.grid_size, self.num_patches = self._init_img_size(img_size)
        if output_fmt is not None:
            self.flatten = False
            self.output_fmt = Format(output_fmt)
        else:
            self.flatten = flatten
            self.output_fmt = Format.NCHW
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad

        if inner_norm not in STEM_NORMS:
            raise ValueError(f"hMLP stem inner_norm '{inner_norm}' is unknown; use 'none' or 'layer'.")
        k1, k2, k3 = hmlp_kernels(self.patch_size[0])
        hidden = embed_dim // 4

        def inner() -> nn.Module:
            return LayerNorm2d(hidden, **dd) if inner_norm == "layer" else nn.Identity()

        # parameter names proj.{0,1,3,4,6,7} follow DeiT's hMLP_stem (1 and 4: its inner norms)
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, hidden, kernel_size=k1, stride=k1, **dd),
            inner(),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=k2, stride=k2, **dd),
            inner(),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim, kernel_size=k3, stride=k3, bias=bias, **dd),
            LayerNorm2d(embed_dim, **dd),
        )
        # timm's PatchEmbed has an optional norm after the projection; ours is proj[-1]
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def _init_img_size(self, img_size):
        if img_size is None:
            return None, None, None
        img_size = to_2tuple(img_size)
        grid_size = tuple(s // p for s, p in zip(img_size, self.patch_size))
        return img_size, grid_size, grid_size[0] * grid_size[1]

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("hMLP stem cannot change its patch size after construction; "
                             "build a new model with the patch size you need.")
        img_size = img_size or self.img_size
        if img_size != self.img_size:
            self.img_size, self.grid_size, self.num_patches = self._init_img_size(img_size)

    def feat_ratio(self, as_scalar: bool = True):
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        if self.dynamic_img_pad:
            return math.ceil(img_size[0] / self.patch_size[0]), math.ceil(img_size[1] / self.patch_size[1])
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, H/P * W/P, D) (or NHWC / NCHW as configured)."""
        _, _, H, W = x.shape
        p = self.patch_size[0]
        if self.img_size is not None and self.strict_img_size:
            if (H, W) != tuple(self.img_size):
                raise ValueError(f"Input size {H}x{W} does not match the model's {self.img_size[0]}x"
                                 f"{self.img_size[1]}; resize the images or build with dynamic_img_size=True.")
        elif not self.dynamic_img_pad and (H % p or W % p):
            raise ValueError(f"Input size {H}x{W} is not divisible by the patch size {p}; "
                             "crop or pad the images to a multiple of it.")
        if self.dynamic_img_pad:
            x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        # kernel == stride: convolving the whole image equals embedding every patch on its own
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        elif self.output_fmt != Format.NCHW:
            x = nchw_to(x, self.output_fmt)
        return self.norm(x)
