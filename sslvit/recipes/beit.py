"""The BEiT run: its keys (``pretrain/beit.py --help``), transform, block-mask collate, the run's
tokenizer, and the objective."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional
from pathlib import Path

from sslvit.data.collates import BlockMaskCollate
from sslvit.data.transforms import hflip_for, mae_train_transform
from sslvit.models.backbone_config import BackboneConfig
from sslvit.objectives.beit import BEiT, BEiTConfig
from sslvit.tokenizers.tokenizer_config import TokenizerConfig
from sslvit.train.train_config import TrainConfig


@dataclass
class BEiTRunConfig:
    """``pretrain/beit.py``: the reference defaults (ViT-B/16, 224 px, LayerScale 0.1, 800 epochs,
    lr 1.5e-3 at batch 2048 = blr 1.875e-4, AdamW betas (0.9, 0.98), grad clip 3.0, drop path 0.1).
    With ``data: digits`` the ``sslvit/presets/beit.yaml`` preset replaces them first."""

    data: str = "digits"
    out: str = "runs/beit"
    resume: bool = False
    init: Optional[str] = None  # weights to start a new run from (a file or a run directory); not --resume
    model: BackboneConfig = field(default_factory=lambda: BackboneConfig(
        size="base", init_values=0.1, drop_path_rate=0.1))
    beit: BEiTConfig = field(default_factory=BEiTConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=800, blr=1.875e-4, min_lr=1e-5, warmup_epochs=10, weight_decay=0.05, betas=(0.9, 0.98),
        clip_grad=3.0))

    def validate(self) -> None:
        """On every process, before the main one fits the tokenizer while the others wait for it."""
        self.model.validate()
        self.train.validate()
        if not self.tokenizer.path:
            self.tokenizer.validate()

    def build_objective(self) -> BEiT:
        from sslvit.models.vit import build_backbone  # timm and faiss: imported to build, not for --help
        from sslvit.recipes.run_tokenizer import run_tokenizer

        self.validate()
        tokenizer = run_tokenizer(self.tokenizer, self.data, self.model.img_size, self.model.patch_size,
                                  Path(self.out).expanduser(), self.resume, self.train_transform())
        return BEiT(build_backbone(self.model), tokenizer, self.beit)

    def train_transform(self):
        return mae_train_transform(self.model.img_size, self.train.crop_scale,
                                   hflip=hflip_for(self.data, self.train.hflip))

    def collate_fn(self):
        grid = (self.model.img_size // self.model.patch_size,) * 2
        return BlockMaskCollate(seed=self.train.seed, **self.beit.mask_args(grid))
