"""A tokenizer's keys (``--tokenizer.*``, ``python -m sslvit.tokenizers fit --help``), without the
fitting code's imports (faiss, timm, torchvision): what a command needs for its help and checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sslvit.config import ConfigError

RUN_TOKENIZER = "tokenizer.safetensors"
FAISS_MIN_POINTS_PER_CODE = 39  # below this faiss warns that k-means is under-determined


@dataclass
class TokenizerFitConfig:
    kind: str = "pixel"  # pixel (k-means over normalised patch pixels) | features (over a teacher's patch features)
    teacher: Optional[str] = None  # features: run directory (or backbone.safetensors) of a pretrained sslvit backbone
    vocab: int = 8192  # codebook size (BEiT: 8192)
    fit_images: int = 2000  # training images sampled for k-means (all their patches are used)
    pixel_size: int = 8  # pixel: each patch is average-pooled to this side first (BEiT's dVAE sees 112 px)
    grey: bool = False  # pixel: quantise each patch's luma, not its colour (codes are shapes); features: unused
    iters: int = 20  # k-means iterations
    seed: int = 0

    def validate(self) -> None:
        if self.kind not in ("pixel", "features"):
            raise ConfigError(f"tokenizer kind '{self.kind}' is unknown; use pixel or features.")
        if self.kind == "features" and not self.teacher:
            raise ConfigError("The features tokenizer needs a teacher; pass teacher with the run directory of a "
                              "pretrained sslvit backbone (e.g. a DINO run).")
        if self.fit_images < 1 or self.iters < 1:
            raise ConfigError(f"fit_images and iters must be >= 1 (got {self.fit_images}, {self.iters}).")


@dataclass
class TokenizerConfig(TokenizerFitConfig):
    """A BEiT run's tokenizer: a fitted file, or the settings to fit one on its training data."""

    path: Optional[str] = None  # a fitted tokenizer (.safetensors); None: fit one with the keys above
