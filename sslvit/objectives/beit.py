"""BEiT: masked image modeling with visual-token targets (Bao et al. 2022; microsoft/unilm beit).

About 40% of the patches are masked block-wise; the encoder (the shared backbone) sees the whole
sequence with the masked patches' embeddings replaced by a learned mask token, and a linear head
predicts each masked patch's visual-token id; the loss is the cross-entropy over the masked
patches only. The ids come from a tokenizer that sslvit fits itself (``sslvit.tokenizers``:
BEiT's DALL-E dVAE is a download), computed per batch under no_grad inside the forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslvit.config import ConfigError
from sslvit.masking import block_masking, scaled_min_block
from sslvit.objectives.base import Objective

if TYPE_CHECKING:  # annotations only: --help needs neither timm nor faiss
    from sslvit.models.vit import SSLViT
    from sslvit.tokenizers.base import Tokenizer


@dataclass
class BEiTConfig:
    mask_ratio: float = 0.4  # masked share, rounded to whole patches (BEiT's code masks 75 of 196, 0.383)
    min_block: Optional[float] = None  # smallest block in patches; None: BEiT's 16 scaled to the grid (>= 1)
    max_block: Optional[int] = None  # largest block; None: the whole budget (BEiT)
    min_aspect: float = 0.3  # block aspect ratio log-uniform in [min_aspect, 1 / min_aspect]

    def mask_args(self, grid: tuple[int, int]) -> dict:
        """``block_masking`` keywords for a grid: the masked count and the block bounds."""
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"beit.mask_ratio must be between 0 and 1 (got {self.mask_ratio}).")
        n = grid[0] * grid[1]
        min_block = self.min_block if self.min_block is not None else scaled_min_block(16, n)
        return dict(grid=tuple(grid), num_masked=max(1, round(self.mask_ratio * n)), min_block=min_block,
                    max_block=self.max_block, min_aspect=self.min_aspect)


def beit_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (M, V) and token ids (M,) of the M masked patches -> (mean cross-entropy, accuracy)."""
    logits = logits.float()
    return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).float().mean()


class BEiT(Objective):
    """Objective: ``forward((imgs (B, C, H, W), mask (B, N) bool))`` -> dict(loss, mlm_acc);
    given bare ``imgs`` it draws the block masks itself."""

    def __init__(self, backbone: SSLViT, tokenizer: Tokenizer, cfg: BEiTConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        tokenizer.check_backbone(backbone.patch_size, backbone.patch_embed.img_size[0], backbone.dynamic_img_size)
        self.tokenizer = tokenizer.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.head = nn.Linear(backbone.embed_dim, tokenizer.vocab)  # BEiT's lm_head
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.mask_args = cfg.mask_args(backbone.patch_embed.grid_size)

    def no_weight_decay(self) -> set[str]:
        return {"backbone.cls_token", "backbone.pos_embed", "mask_token"}

    def encode(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder over the whole sequence, masked patches as mask tokens -> (B, 1 + N, D)."""
        return self.backbone.encode(imgs, mask=mask, mask_token=self.mask_token)

    def draw_masks(self, batch_size: int, device) -> torch.Tensor:
        return block_masking(batch_size, **self.mask_args).to(device)

    def forward_logits(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-> logits (M, V) of the masked patches, in the order of ``tensor[mask]``."""
        x = self.encode(imgs, mask)[:, self.backbone.num_prefix_tokens:]
        return self.head(x[mask])

    def forward(self, batch) -> dict:
        imgs, mask = batch if isinstance(batch, (tuple, list)) else (batch, self.draw_masks(len(batch), batch.device))
        targets = self.tokenizer.encode(imgs, mask)  # batched, no grad, fp32
        loss, acc = beit_loss(self.forward_logits(imgs, mask), targets)
        return {"loss": loss, "mlm_acc": acc.detach()}

    @torch.no_grad()
    def pictures(self, imgs: torch.Tensor):
        """Columns: image, its block mask, its token-id map through the codebook, and the same map
        with the masked patches' tokens as the model predicts them."""
        mask = self.draw_masks(len(imgs), imgs.device)
        ids = self.tokenizer.encode(imgs)
        predicted = ids.clone()
        predicted[mask] = self.forward_logits(imgs, mask).argmax(-1)
        B, _, H, W = imgs.shape
        p = self.backbone.patch_size
        m = F.interpolate(mask.float().view(B, 1, H // p, W // p), scale_factor=p, mode="nearest")
        # titles say how to read the token maps: each patch drawn as its code (tokenizer.draw)
        tokens, guessed = "tokens: each patch as its code", "model's tokens in the masked patches"
        columns = {"original": imgs, "block mask": imgs * (1 - m), tokens: self.tokenizer.draw(ids, imgs),
                   guessed: self.tokenizer.draw(predicted, imgs)}
        return columns, {tokens: False, guessed: False}
