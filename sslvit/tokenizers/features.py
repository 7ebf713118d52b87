"""Feature tokenizer: k-means over a pretrained sslvit backbone's patch features (BEiT v2's idea).

BEiT v2 distils a VQ codebook from a teacher's (CLIP's) patch features; here the teacher is a
backbone that sslvit itself pretrained (a DINO or MAE run), and the codebook is spherical k-means
over its l2-normalised final-norm patch tokens, as BEiT v2's codebook is l2-normalised and
looked up by cosine. The tokens then carry what the teacher learned, not raw pixel patterns.
The teacher's weights are saved inside the tokenizer file, so a run never needs the teacher's
run directory again."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from sslvit.config import ConfigError
from sslvit.models.export import load_backbone
from sslvit.models.vit import BackboneConfig, SSLViT, build_backbone
from sslvit.tokenizers.base import Tokenizer


class FeatureTokenizer(Tokenizer):
    """``vectors(imgs (B, C, H, W))`` -> (B, N, D): the teacher's l2-normalised patch tokens."""

    kind = "features"
    spherical = True

    def __init__(self, vocab: int, teacher: SSLViT, teacher_cfg: BackboneConfig, source: str = ""):
        super().__init__(vocab, teacher.embed_dim, teacher.patch_size)
        self.teacher = teacher.requires_grad_(False).eval()
        self.teacher_cfg, self.source = teacher_cfg, source

    @classmethod
    def from_run(cls, run: str | Path, vocab: int) -> "FeatureTokenizer":
        """An unfitted tokenizer over the exported backbone of ``run`` (a run directory or its
        backbone.safetensors), e.g. a DINO or MAE run."""
        teacher, cfg = load_backbone(run)
        return cls(vocab, teacher, cfg, source=str(Path(run).expanduser()))

    def header(self) -> dict:
        return {**super().header(), "teacher": dataclasses.asdict(self.teacher_cfg), "teacher_source": self.source,
                "normalisation": {"image": "the teacher's input (ImageNet mean/std)",
                                  "features": "final-norm patch tokens, l2-normalised; codes l2-normalised"}}

    @classmethod
    def from_header(cls, header: dict) -> "FeatureTokenizer":
        cfg = BackboneConfig(**header["teacher"])
        return cls(header["vocab"], build_backbone(cfg), cfg, header.get("teacher_source", ""))

    def vectors(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.teacher.forward_features(imgs)[:, self.teacher.num_prefix_tokens:]
        return F.normalize(x.float(), dim=-1)

    def check_backbone(self, patch_size: int, img_size: int, dynamic_img_size: bool) -> None:
        super().check_backbone(patch_size, img_size, dynamic_img_size)
        if img_size != self.teacher_cfg.img_size and not self.teacher_cfg.dynamic_img_size:
            raise ConfigError(f"The tokenizer's teacher takes {self.teacher_cfg.img_size} px images and "
                              f"model.img_size is {img_size}; train at {self.teacher_cfg.img_size} px or use a "
                              "teacher built with dynamic_img_size true.")
