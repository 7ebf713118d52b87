"""The MAE run: its keys (``pretrain/mae.py --help``), data transform and objective."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sslvit.data.transforms import hflip_for, mae_train_transform
from sslvit.models.backbone_config import VIT_SIZES, BackboneConfig
from sslvit.objectives.mae import MAE, MAEConfig
from sslvit.train.train_config import TrainConfig


@dataclass
class MAERunConfig:
    """``pretrain/mae.py``: the reference defaults (ViT-B/16, 224 px, 800 epochs, blr 1.5e-4).
    With ``data: digits`` the ``sslvit/presets/mae.yaml`` preset replaces them first."""

    data: str = "digits"  # 'digits' (embedded) or a folder of images
    out: str = "runs/mae"
    resume: bool = False
    init: Optional[str] = None  # weights to start a new run from (a file or a run directory); not --resume
    model: BackboneConfig = field(default_factory=lambda: BackboneConfig(size="base", pos_embed="sincos"))
    mae: MAEConfig = field(default_factory=MAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.mae.validate((self.model.img_size // self.model.patch_size) ** 2, VIT_SIZES[self.model.size][0])

    def build_objective(self) -> MAE:
        from sslvit.models.vit import build_backbone  # timm: imported to build, not for --help

        return MAE(build_backbone(self.model), self.mae)

    def train_transform(self):
        return mae_train_transform(self.model.img_size, self.train.crop_scale,
                                   hflip=hflip_for(self.data, self.train.hflip))
