"""MAE + DINO in one step on one backbone (``pretrain/mae_dino.py``): MAE's masked reconstruction
of one MAE-augmented view and DINO's self-distillation over the multi-crop views, weighted."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from sslvit.data.collates import CompositeCollate
from sslvit.data.multicrop import MultiCropConfig, multicrop_data
from sslvit.data.transforms import CompositeTransform, hflip_for, mae_train_transform
from sslvit.models.backbone_config import VIT_SIZES, BackboneConfig
from sslvit.objectives.composite import Composite
from sslvit.objectives.dino import DINO, DINOConfig
from sslvit.objectives.mae import MAE, MAEConfig
from sslvit.recipes.dino import dino_backbone, dino_train
from sslvit.train.train_config import TrainConfig


@dataclass
class PartWeights:
    """Each part's loss weight; 0 leaves the part out (``--weights.dino 0`` is plain MAE)."""
    mae: float = 1.0
    dino: float = 1.0


@dataclass
class MAEDINORunConfig:
    """The parts' reference keys (``mae.*``, ``dino.*``, ``crops.*``) on one ViT-S/16 with learned
    position embeddings (DINO's local crops interpolate them) and DINO's optimisation keys. The
    exported backbone is DINO's teacher (``export dino``) or the trained backbone (``export mae``)."""

    data: str = "digits"
    out: str = "runs/mae_dino"
    resume: bool = False
    init: Optional[str] = None  # weights to start a new run from (a file or a run directory); not --resume
    model: BackboneConfig = field(default_factory=dino_backbone)
    weights: PartWeights = field(default_factory=PartWeights)
    export: str = "auto"  # auto (dino when it is a part) | mae | dino
    mae: MAEConfig = field(default_factory=MAEConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    train: TrainConfig = field(default_factory=dino_train)

    def parts(self) -> list[str]:
        return [name for name in ("mae", "dino") if getattr(self.weights, name) > 0]

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        if not self.parts():
            raise ValueError("weights.mae and weights.dino are both 0: give at least one part a weight above 0.")
        if "mae" in self.parts():
            self.mae.validate((self.model.img_size // self.model.patch_size) ** 2, VIT_SIZES[self.model.size][0])
        if "dino" in self.parts():
            self.crops.validate(self.model.img_size, self.model.patch_size)

    def build_objective(self) -> Composite:
        from sslvit.models.vit import build_backbone  # timm: imported to build, not for --help

        self.validate()
        backbone, parts = build_backbone(self.model), {}
        if "mae" in self.parts():  # first: MAE's xavier init of the backbone comes before DINO copies its teacher
            parts["mae"] = MAE(backbone, self.mae)
        if "dino" in self.parts():
            parts["dino"] = DINO(backbone, build_backbone(dataclasses.replace(self.model, drop_path_rate=0.0)),
                                 self.dino)
        export = ("dino" if "dino" in parts else "mae") if self.export == "auto" else self.export
        return Composite(parts, dataclasses.asdict(self.weights), export)

    def train_transform(self):
        size, hflip = self.model.img_size, hflip_for(self.data, self.train.hflip)
        make = {"mae": lambda: mae_train_transform(size, self.train.crop_scale, hflip=hflip),
                "dino": lambda: multicrop_data(size, self.crops, hflip)[0]}
        return CompositeTransform({name: make[name]() for name in self.parts()})

    def collate_fn(self):
        dino = multicrop_data(self.model.img_size, self.crops)[1]
        return CompositeCollate({name: {"mae": None, "dino": dino}[name] for name in self.parts()})
