"""The DINO run: its keys (``pretrain/dino.py --help``), multi-crop transform and collate, and objective."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from sslvit.data.multicrop import MultiCropConfig, multicrop_data
from sslvit.data.transforms import hflip_for
from sslvit.models.backbone_config import BackboneConfig
from sslvit.objectives.dino import DINO, DINOConfig
from sslvit.recipes.start_run import StartRun, check_start, start_run
from sslvit.train.train_config import TrainConfig


def dino_backbone() -> BackboneConfig:
    """DINO's ViT-S/16: learned position embeddings (interpolated for the local crops), drop path 0.1."""
    return BackboneConfig(size="small", pos_embed="learned", drop_path_rate=0.1, dynamic_img_size=True)


def dino_train() -> TrainConfig:
    """DINO's optimisation: blr 5e-4, cosine weight decay 0.04 -> 0.4, per-parameter clipping at 3."""
    return TrainConfig(epochs=100, blr=5e-4, min_lr=1e-6, warmup_epochs=10, weight_decay=0.04, weight_decay_end=0.4,
                       betas=(0.9, 0.999), clip_grad=3.0, clip_mode="per_param", log_every=10)


@dataclass
class DINORunConfig:
    """``pretrain/dino.py``: the reference defaults (ViT-S/16, 224 px global and 8 x 96 px local
    crops, K = 65536, 100 epochs, blr 5e-4). With ``data: digits`` the ``sslvit/presets/dino.yaml``
    preset replaces them first."""

    data: str = "digits"
    out: str = "runs/dino"
    resume: bool = False
    init: Optional[str] = None  # weights to start a new run from (a file or a run directory); not --resume
    # a run to train first and start from (OUT/start-mae33/): mae:EPOCHS, mae, or none (random weights);
    # the small-data recipes set mae:33, --init skips it
    start: Optional[str] = None
    model: BackboneConfig = field(default_factory=dino_backbone)
    dino: DINOConfig = field(default_factory=DINOConfig)
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    train: TrainConfig = field(default_factory=dino_train)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.crops.validate(self.model.img_size, self.model.patch_size)
        check_start(self.start)
        if self.crops.local_number and not self.model.dynamic_img_size:
            raise ValueError("DINO's local crops need model.dynamic_img_size true (the position embedding is "
                             "interpolated to their grid); set it, or crops.local_number 0.")

    def start_run(self) -> Optional[StartRun]:
        """The run trained first whose backbone this one starts from (``start``), or None."""
        return start_run(self)

    def build_objective(self) -> DINO:
        from sslvit.models.vit import build_backbone  # timm: imported to build, not for --help

        self.validate()
        student = build_backbone(self.model)
        teacher = build_backbone(dataclasses.replace(self.model, drop_path_rate=0.0))
        return DINO(student, teacher, self.dino)

    def train_transform(self):
        return multicrop_data(self.model.img_size, self.crops, hflip_for(self.data, self.train.hflip))[0]

    def collate_fn(self):
        return multicrop_data(self.model.img_size, self.crops)[1]
