"""The one backbone: timm's VisionTransformer with an hMLP (or linear) patch stem.

``SSLViT`` subclasses timm's ``VisionTransformer`` only to add a forward over a subset of
patches; every parameter keeps timm's name, so a state dict loads with ``strict=True`` into
``timm.create_model(**timm_spec(cfg))`` and gives the same features.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block, ParallelThingsBlock, VisionTransformer

from sslvit.models.attention import Attention
from sslvit.models.backbone_config import VIT_SIZES, BackboneConfig, check_img_size  # noqa: F401 (their home was here)
from sslvit.models.hmlp_stem import HMLPStem


def timm_spec(cfg: BackboneConfig) -> dict:
    """Arguments for ``timm.create_model(**spec)`` that build this backbone (no head) in timm."""
    width, depth, heads = VIT_SIZES[cfg.size]
    kwargs = dict(
        model_name=f"vit_{cfg.size}_patch16_224",
        pretrained=False,
        num_classes=0,
        patch_size=cfg.patch_size,
        img_size=cfg.img_size,
        embed_dim=width,
        depth=cfg.depth or depth,
        num_heads=heads,
        init_values=cfg.init_values,
        drop_path_rate=cfg.drop_path_rate,
        dynamic_img_size=cfg.dynamic_img_size,
        reg_tokens=cfg.reg_tokens,
        embed_layer=_stem(cfg),
        block_fn=Block,
    )
    if cfg.parallel > 1:
        kwargs["block_fn"] = _parallel_block(cfg.parallel)
    return kwargs


def _stem(cfg: BackboneConfig):
    """timm's ``embed_layer``: HMLPStem itself for today's stem, so ``embed_layer=HMLPStem`` loads it."""
    if cfg.stem == "linear":
        return PatchEmbed
    return HMLPStem if cfg.stem_norm == "none" else partial(HMLPStem, inner_norm=cfg.stem_norm)


def _parallel_block(n: int):
    if n == 2:
        return ParallelThingsBlock  # its default num_parallel is 2: keeps the spec plain for timm users

    def block(**kw):
        return ParallelThingsBlock(num_parallel=n, **kw)

    return block


def sincos_pos_embed(grid_size, dim: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Fixed 2-D sin-cos table (1, prefix + h*w, dim); the prefix (cls) rows are zero, as in MAE."""
    table = build_sincos2d_pos_embed(list(grid_size), dim=dim)  # (h*w, dim), raster order
    return torch.cat([torch.zeros(num_prefix_tokens, dim), table], 0).unsqueeze(0)


class SSLViT(VisionTransformer):
    """timm ViT plus ``encode`` (the masked encoder: visible patches only, or mask tokens) and ``patchify``."""

    def __init__(self, *args, fixed_pos_embed: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.no_embed_class or not self.has_class_token:
            raise ValueError("SSLViT expects a class token (and registers, if any) that carry position embeddings.")
        if fixed_pos_embed:
            with torch.no_grad():
                self.pos_embed.copy_(sincos_pos_embed(self.patch_embed.grid_size, self.embed_dim,
                                                      self.num_prefix_tokens))
            self.pos_embed.requires_grad_(False)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C, P, P), patches in the stem's raster order."""
        B, C, H, W = imgs.shape
        p = self.patch_size
        h, w = H // p, W // p
        x = imgs[:, :, : h * p, : w * p].reshape(B, C, h, p, w, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C, p, p)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, M, C, P, P) -> (B, M, D). Exact for both stems: every conv has kernel == stride."""
        B, M = patches.shape[:2]
        x = self.patch_embed.proj(patches.flatten(0, 1))  # (B*M, D, 1, 1)
        return self.patch_embed.norm(x.reshape(B, M, -1))

    def grid_pos_embed(self, grid) -> torch.Tensor:
        """Position table (1, 1 + h*w, D) for a grid, interpolated when it is not the native one."""
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        if not self.dynamic_img_size:
            raise ValueError(f"Image grid {tuple(grid)} differs from the model's {self.patch_embed.grid_size}; "
                             "build the backbone with dynamic_img_size=True to use other image sizes.")
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=self.patch_embed.grid_size,
                                      num_prefix_tokens=self.num_prefix_tokens)

    def encode(self, imgs: torch.Tensor, keep: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
               mask_token: Optional[torch.Tensor] = None, depth: Optional[int] = None,
               norm: bool = True) -> torch.Tensor:
        """The one masked-encoder entry every objective and the attention maps use.

        imgs (B, C, H, W) -> (B, P + tokens, D), P = ``num_prefix_tokens`` (cls, then registers):
          keep (B, K) patch indices: only those patches are embedded and encoded, the rest are
              absent from attention (MAE's encoder) -> (B, P + K, D);
          mask (B, N) bool with mask_token (1, 1, D): the masked patches' stem outputs are replaced
              by the token (BEiT, iBOT); the hMLP stem embeds each patch alone, so no masked pixel
              reaches the encoder -> (B, P + N, D);
          neither: the whole image (B, P + N, D).
        ``depth`` runs only the first blocks; ``norm`` False skips the final norm. The blocks run
        under timm's gradient checkpointing when ``set_grad_checkpointing()`` turned it on."""
        if keep is not None and mask is not None:
            raise ValueError("encode takes keep (visible patches) or mask (mask-token patches), not both.")
        if (mask is None) != (mask_token is None):
            raise ValueError("encode's mask and mask_token come together.")
        B, p = imgs.shape[0], self.patch_size
        pos = self.grid_pos_embed((imgs.shape[2] // p, imgs.shape[3] // p))
        pos_patch = pos[:, self.num_prefix_tokens:].expand(B, -1, -1)
        if keep is not None:
            patches = self.patchify(imgs)
            kept = torch.gather(patches, 1, keep[:, :, None, None, None].expand(-1, -1, *patches.shape[2:]))
            x = self.embed_patches(kept)
            x = x + torch.gather(pos_patch, 1, keep[:, :, None].expand(-1, -1, x.shape[-1]))
        else:
            x = self.embed_patches(self.patchify(imgs))
            if mask is not None:
                w = mask.unsqueeze(-1).type_as(x)
                x = x * (1 - w) + mask_token.to(x.dtype) * w
            x = x + pos_patch
        prefix = self.cls_token if self.reg_token is None else torch.cat([self.cls_token, self.reg_token], dim=1)
        prefix = (prefix + pos[:, :self.num_prefix_tokens]).expand(B, -1, -1)
        x = self.norm_pre(self.pos_drop(torch.cat([prefix, x], dim=1)))
        x = self.run_blocks(x, depth)
        return self.norm(x) if norm else x

    def run_blocks(self, x: torch.Tensor, depth: Optional[int] = None) -> torch.Tensor:
        """(B, T, D) through the first ``depth`` blocks (all by default), checkpointed as timm does."""
        blocks = self.blocks if depth is None else self.blocks[:depth]
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint_seq(blocks, x)
        return blocks(x)

    def features(self, imgs: torch.Tensor, pool: str = "cls", n_last_blocks: int = 4) -> torch.Tensor:
        """(B, C, H, W) -> (B, F), the frozen-feature recipes of the probes:
          cls      the final-norm cls token (F = D);
          avg      the mean of the final-norm patch tokens (F = D);
          dino     the final-norm cls tokens of the last ``n_last_blocks`` blocks, concatenated
                   (DINO's linear protocol for ViT-S, F = n * D);
          dino_avg ``dino`` plus the average patch token of the last block (F = (n + 1) * D);
          blocks   BEiT's linear protocol (``run_linear_eval.py``): for every block, its output's cls
                   token and mean patch token, before any norm (F = depth * 2D, block by block)."""
        if pool in ("cls", "avg"):
            x = self.forward_features(imgs)
            return x[:, 0] if pool == "cls" else x[:, self.num_prefix_tokens:].mean(1)
        if pool in ("dino", "dino_avg"):
            if not 1 <= n_last_blocks <= len(self.blocks):
                raise ValueError(f"n_last_blocks {n_last_blocks} must be between 1 and the depth {len(self.blocks)}.")
            outs = self.forward_intermediates(imgs, indices=n_last_blocks, return_prefix_tokens=True, norm=True,
                                              output_fmt="NLC", intermediates_only=True)
            feats = [prefix[:, 0] for _, prefix in outs]  # (spatial, prefix) per block
            if pool == "dino_avg":
                feats.append(outs[-1][0].mean(1))
            return torch.cat(feats, dim=-1)
        if pool == "blocks":
            outs = self.forward_intermediates(imgs, indices=len(self.blocks), return_prefix_tokens=True, norm=False,
                                              output_fmt="NLC", intermediates_only=True)
            return torch.cat([torch.cat([prefix[:, 0], spatial.mean(1)], dim=-1) for spatial, prefix in outs], dim=-1)
        raise ValueError(f"pool '{pool}' is unknown; use cls, avg, dino, dino_avg or blocks.")


def build_backbone(cfg: BackboneConfig) -> SSLViT:
    """Build the backbone described by ``cfg`` (see ``timm_spec`` for the timm equivalent)."""
    cfg.validate()
    spec = timm_spec(cfg)
    spec.pop("model_name")
    spec.pop("pretrained")
    # sslvit's Attention is timm's with a faster kernel for CPU bf16 training (same parameters), so
    # it stays out of timm_spec: timm's own Attention loads these weights
    backbone = SSLViT(fixed_pos_embed=cfg.pos_embed == "sincos", attn_layer=Attention, **spec)
    backbone.set_grad_checkpointing(cfg.grad_checkpointing)
    return backbone
