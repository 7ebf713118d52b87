"""MAE: masked autoencoder with pixel targets (He et al. 2022; facebookresearch/mae).

The encoder (the shared backbone) sees the visible 25% of patches only, stem included;
a light decoder fills the masked places with a shared mask token and regresses the
(per-patch normalised) pixels; the loss is averaged over the masked patches only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn

from sslvit.data.transforms import grey_to_normalised_rgb, luma
from sslvit.masking import global_batch_rows, random_masking
from sslvit.objectives.base import Objective, StepInfo

if TYPE_CHECKING:
    from sslvit.models.vit import SSLViT


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    # pixels: MAE's RGB patches; luma: each patch's grey values (on sets whose colour is a per-image
    # nuisance, so the loss is spent on shapes)
    target: str = "pixels"
    # None: the decoder follows the encoder (MAE's 512 x 8 with 16 heads from ViT-B up; for a
    # narrower encoder its width, 4 blocks, 32-d heads), so a ViT-Ti keeps no decoder 6x its size
    decoder_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_heads: Optional[int] = None

    def decoder_shape(self, embed_dim: int) -> tuple[int, int, int]:
        """(width, depth, heads) of the decoder for an encoder of width ``embed_dim``."""
        dim = self.decoder_dim or min(512, embed_dim)
        depth = self.decoder_depth or (8 if embed_dim >= 768 else 4)
        return dim, depth, self.decoder_heads or max(1, dim // 32)

    def validate(self, num_patches: int, embed_dim: int = 768) -> None:
        if not 0.0 <= self.mask_ratio < 1.0 or int(num_patches * (1 - self.mask_ratio)) < 1:
            raise ValueError(f"mae.mask_ratio {self.mask_ratio} leaves no visible patch of {num_patches}; use a "
                             "ratio in (0, 1) that keeps at least one (0.75 is MAE's).")
        if num_patches - int(num_patches * (1 - self.mask_ratio)) < 1:
            raise ValueError(f"mae.mask_ratio {self.mask_ratio} masks no patch of {num_patches}, so there is nothing "
                             "to reconstruct; use a ratio in (0, 1) (0.75 is MAE's).")
        if self.target not in ("pixels", "luma"):
            raise ValueError(f"mae.target '{self.target}' is unknown; use pixels (MAE's) or luma.")
        dim, _, heads = self.decoder_shape(embed_dim)
        if dim % heads:
            raise ValueError(f"mae.decoder_dim {dim} is not divisible by mae.decoder_heads {heads}; pick a head "
                             "count that divides it.")


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True) -> torch.Tensor:
    """pred, target: (B, N, P*P*C); mask: (B, N), 1 = masked. Mean per-patch MSE over masked patches."""
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target).pow(2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """Latent (B, P + K, D): P prefix tokens (cls, registers) then K visible patches, + ids_restore
    (B, N) -> pixel predictions (B, N, P*P*C)."""

    def __init__(self, embed_dim: int, grid_size, patch_dim: int, dim: int = 512, depth: int = 8,
                 heads: int = 16, mlp_ratio: float = 4.0, num_prefix_tokens: int = 1):
        from timm.models.vision_transformer import Block  # here, not at the top: --help needs no timm

        from sslvit.models.vit import sincos_pos_embed

        super().__init__()
        num_patches = grid_size[0] * grid_size[1]
        self.num_prefix_tokens = num_prefix_tokens  # cls, and the backbone's registers
        self.decoder_embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(grid_size, dim, num_prefix_tokens), requires_grad=False)
        self.decoder_blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch_dim)
        assert self.decoder_pos_embed.shape[1] == num_patches + num_prefix_tokens

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        B, N = ids_restore.shape
        P = self.num_prefix_tokens
        mask_tokens = self.mask_token.expand(B, N + P - x.shape[1], -1)
        x_ = torch.cat([x[:, P:], mask_tokens], dim=1)  # [visible, masked] in shuffled order
        x_ = torch.gather(x_, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[-1]))  # unshuffle
        x = torch.cat([x[:, :P], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, P:])


class MAE(Objective):
    """Objective: ``forward(imgs (B, C, H, W))`` -> dict(loss, ...)."""

    def __init__(self, backbone: SSLViT, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        p = backbone.patch_size
        dim, depth, heads = cfg.decoder_shape(backbone.embed_dim)
        self.decoder = MAEDecoder(backbone.embed_dim, backbone.patch_embed.grid_size,
                                  patch_dim=p * p * self.target_chans, dim=dim, depth=depth, heads=heads,
                                  num_prefix_tokens=backbone.num_prefix_tokens)
        mae_init(self)

    @property
    def target_chans(self) -> int:
        return 1 if self.cfg.target == "luma" else self.backbone.in_chans

    def no_weight_decay(self) -> set[str]:
        """Only a learned position table beyond the loop's biases and 1-D parameters: MAE's
        ``add_weight_decay`` decays the cls and mask tokens and registers (its sin-cos tables are
        fixed and have no gradient)."""
        return {"backbone.pos_embed"}

    def init_targets(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "mae_decoder": self.decoder}  # --init from an MAE file keeps its decoder

    batch_key = None  # (seed key, this micro-batch's rows, global batch size), set before each forward

    def before_micro_batch(self, info: StepInfo) -> None:
        self.batch_key = (info.key, info.rows, info.global_size)

    @torch.compiler.disable  # the batch key changes every step: compiled, it would recompile every step
    def _mask_noise(self, num_patches: int, device) -> torch.Tensor | None:
        """(B, N) masking noise keyed by the rows of the global batch, or None (torch's RNG)."""
        if not self.training or self.batch_key is None:
            return None
        key, rows, global_size = self.batch_key
        return global_batch_rows(key, rows, global_size, num_patches, device)

    def forward_pred(self, imgs: torch.Tensor):
        """imgs (B, C, H, W) -> pred (B, N, P*P*C), target (B, N, P*P*C), mask (B, N); C = 1 for
        ``target: luma``."""
        patches = self.backbone.patchify(luma(imgs) if self.cfg.target == "luma" else imgs)
        B, N = patches.shape[:2]
        noise = self._mask_noise(N, imgs.device)
        ids_keep, mask, ids_restore = random_masking(B, N, self.cfg.mask_ratio, device=imgs.device, noise=noise)
        latent = self.backbone.encode(imgs, keep=ids_keep)
        pred = self.decoder(latent, ids_restore)
        return pred, patches.flatten(2), mask

    def forward(self, imgs: torch.Tensor) -> dict:
        pred, target, mask = self.forward_pred(imgs)
        return {"loss": mae_loss(pred.float(), target.float(), mask, self.cfg.norm_pix_loss)}

    @torch.no_grad()
    def pictures(self, imgs: torch.Tensor) -> dict:
        """Pictures for a grid, each (B, C, H, W): original, masked, reconstruction, reconstruction + visible."""
        pred, target, mask = self.forward_pred(imgs)
        pred = pred.float()
        if self.cfg.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
            mean = target.mean(-1, keepdim=True)
            std = (target.var(-1, keepdim=True) + 1.0e-6) ** 0.5
            pred = pred * std + mean
        m = mask[:, :, None]
        unpatch = self._unpatchify
        return {
            "original": imgs,
            "masked": unpatch(target * (1 - m)),
            "reconstruction": unpatch(pred),
            "reconstruction + visible": unpatch(pred * m + target * (1 - m)),
        }

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C*P*P) -> (B, C, H, W), inverse of ``SSLViT.patchify``."""
        B = x.shape[0]
        p, C = self.backbone.patch_size, self.target_chans
        h, w = self.backbone.patch_embed.grid_size
        x = x.reshape(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(B, C, h * p, w * p)
        return grey_to_normalised_rgb(x) if self.cfg.target == "luma" else x


def mae_init(mae: MAE) -> None:
    """``models_mae.initialize_weights``: every Linear xavier-uniform with zero bias, every stem
    convolution xavier-uniform of its weight viewed as a Linear (out, in * k * k), the cls token,
    registers and the mask token normal with std 0.02 (timm's ViT starts its cls token at 1e-6)."""
    for m in mae.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in mae.backbone.patch_embed.proj.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
    tokens = [mae.backbone.cls_token, mae.decoder.mask_token]
    for t in tokens + ([mae.backbone.reg_token] if mae.backbone.reg_token is not None else []):
        nn.init.normal_(t, std=0.02)
