"""The backbone's keys (``--model.*``): what the entry scripts need for ``--help`` and for their
checks, without importing timm (which imports torchvision, seconds before a command can answer).
``sslvit.models.vit`` builds the model from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


def hmlp_kernels(patch_size: int) -> Tuple[int, int, int]:
    """Kernel (== stride) of the three convolutions: P/4, 2, 2 (16 -> 4,2,2; 8 -> 2,2,2; 4 -> 1,2,2)."""
    if patch_size % 4 != 0 or patch_size < 4:
        raise ValueError(f"hMLP stem needs a patch size that is a multiple of 4 (got {patch_size}); "
                         "use patch_size 4, 8, 16, ... or stem='linear'.")
    return patch_size // 4, 2, 2


STEM_NORMS = ("none", "layer")  # HMLPStem's inner_norm

# width, depth, heads of the standard ViT sizes
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


@dataclass
class BackboneConfig:
    size: str = "small"
    patch_size: int = 16
    img_size: int = 224
    stem: str = "hmlp"  # hmlp | linear
    # hmlp only, the norm after its 1st and 2nd convolution: none | layer (sslvit's stem before 2026-12,
    # which a backbone.json without this key has; why it went: HMLPStem's docstring)
    stem_norm: str = "none"
    pos_embed: str = "sincos"  # sincos (fixed, MAE) | learned
    depth: Optional[int] = None  # None: the size's standard depth
    parallel: int = 1  # branches per block; 2 with depth 18 gives ViT-S 18x2
    init_values: Optional[float] = None  # LayerScale init; None disables it
    drop_path_rate: float = 0.0
    dynamic_img_size: bool = False  # interpolate position embeddings for other grids (DINO local crops)
    reg_tokens: int = 0  # register tokens after cls (Darcet et al. 2023; timm's reg_tokens), with position embeddings
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute

    def validate(self) -> None:
        if self.size not in VIT_SIZES:
            raise ValueError(f"model.size '{self.size}' is unknown; use one of {sorted(VIT_SIZES)}.")
        if self.stem not in ("hmlp", "linear"):
            raise ValueError(f"model.stem '{self.stem}' is unknown; use 'hmlp' or 'linear'.")
        if self.stem_norm not in STEM_NORMS:
            raise ValueError(f"model.stem_norm '{self.stem_norm}' is unknown; use 'none' or 'layer'.")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"model.pos_embed '{self.pos_embed}' is unknown; use 'sincos' or 'learned'.")
        if self.stem == "hmlp":
            hmlp_kernels(self.patch_size)
        if self.patch_size < 1 or self.img_size < self.patch_size:
            raise ValueError(f"model.img_size {self.img_size} holds no patch of model.patch_size {self.patch_size}; "
                             "use a positive image size that is a multiple of the patch size.")
        if self.img_size % self.patch_size:
            raise ValueError(f"model.img_size {self.img_size} is not a multiple of model.patch_size "
                             f"{self.patch_size}; pick sizes that divide.")
        if self.parallel < 1:
            raise ValueError(f"model.parallel must be >= 1 (got {self.parallel}).")
        if self.reg_tokens < 0:
            raise ValueError(f"model.reg_tokens must be >= 0 (got {self.reg_tokens}).")


def check_img_size(size: int, patch_size: int, key: str = "--img_size") -> int:
    """``size`` if it is a positive multiple of ``patch_size``; else ValueError naming the nearest valid sizes."""
    if size >= patch_size and size % patch_size == 0:
        return size
    below = max(patch_size, size // patch_size * patch_size)
    near = sorted({below, below + patch_size} if size > patch_size else {patch_size})
    raise ValueError(f"{key} {size} is not a positive multiple of the patch size {patch_size}; use "
                     f"{' or '.join(map(str, near))}.")
