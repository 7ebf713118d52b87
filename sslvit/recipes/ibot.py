"""The iBOT run: DINO's keys, multi-crop data and collate, plus iBOT's keys (``ibot.*``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sslvit.data.multicrop import MultiCropConfig
from sslvit.objectives.dino import DINOConfig
from sslvit.objectives.ibot import IBOT, IBOTConfig
from sslvit.recipes.dino import DINORunConfig


@dataclass
class IBOTRunConfig(DINORunConfig):
    """``pretrain/ibot.py``: iBOT's ViT-S/16 recipe (bytedance/ibot): a shared head of 8192
    prototypes, teacher temperature 0.04 -> 0.07 over 30 epochs for cls and patches, last layer
    not weight-normalised, 10 local crops at 0.05-0.25, global 0.25-1; otherwise DINO's keys
    (100 epochs here; iBOT's headline runs 800). With ``data: digits`` the
    ``sslvit/presets/ibot.yaml`` preset replaces them first."""

    out: str = "runs/ibot"
    dino: DINOConfig = field(default_factory=lambda: DINOConfig(
        out_dim=8192, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30,
        norm_last_layer=False))
    crops: MultiCropConfig = field(default_factory=lambda: MultiCropConfig(
        global_scale=(0.25, 1.0), local_number=10, local_scale=(0.05, 0.25)))
    ibot: IBOTConfig = field(default_factory=IBOTConfig)

    def validate(self) -> None:
        super().validate()
        self.ibot.validate()

    def build_objective(self) -> IBOT:
        from sslvit.models.vit import build_backbone  # timm: imported to build, not for --help

        self.validate()
        student = build_backbone(self.model)
        teacher = build_backbone(dataclasses.replace(self.model, drop_path_rate=0.0))
        return IBOT(student, teacher, self.dino, self.ibot)
