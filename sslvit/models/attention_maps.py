"""The last block's cls-token self-attention per head, drawn over the image (DINO's
``visualize_attention.py``, Caron et al. 2021, fig. 1).

timm's attention does not return its weights (it may run fused), so the weights of the last
block are recomputed here from its own ``qkv`` projection."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, ParallelThingsBlock

from sslvit.models.vit import SSLViT


@torch.no_grad()
def cls_attention(backbone: SSLViT, imgs: torch.Tensor) -> torch.Tensor:
    """imgs (B, C, H, W) -> attention of the cls token to every patch (B, heads, H/P, W/P).

    Each head's map sums to 1 over the patches plus the cls token itself. A parallel last
    block contributes the heads of all its branches."""
    B, _, H, W = imgs.shape
    p = backbone.patch_size
    if H % p or W % p:
        raise ValueError(f"Image size {H}x{W} is not a multiple of the patch size {p}; crop it first.")
    x = backbone.encode(imgs, depth=len(backbone.blocks) - 1, norm=False)  # the input of the last block
    last = backbone.blocks[-1]
    if isinstance(last, Block):
        pairs = [(last.norm1, last.attn)]
    elif isinstance(last, ParallelThingsBlock):
        pairs = [(branch.norm, branch.attn) for branch in last.attns]
    else:
        raise TypeError(f"Attention maps need a timm Block or ParallelThingsBlock, not {type(last).__name__}.")
    maps = []
    for norm, attn in pairs:
        y = norm(x)
        N = y.shape[1]
        qkv = attn.qkv(y).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, N)
        maps.append(weights[:, :, 0, backbone.num_prefix_tokens:])
    return torch.cat(maps, 1).reshape(B, -1, H // p, W // p).float()


def attention_columns(backbone: SSLViT, imgs: torch.Tensor) -> tuple[dict, dict]:
    """imgs (B, 3, H, W) normalised -> picture columns: the image, then one heat map (B, H/P, W/P)
    per head, each rescaled to [0, 1] per image, then their mean; ``save_columns`` draws the maps
    over the image with a colour bar.

    Returns ``(columns, normalized)`` as ``save_columns`` takes them."""
    attn = cls_attention(backbone, imgs)
    lo = attn.flatten(2).min(-1).values[..., None, None]
    hi = attn.flatten(2).max(-1).values[..., None, None]
    scaled = (attn - lo) / (hi - lo).clamp_min(1e-12)
    columns = {"image": imgs}
    for h in range(scaled.shape[1]):
        columns[f"head {h + 1}"] = scaled[:, h]
    mean = scaled.mean(1)
    lo, hi = mean.flatten(1).min(-1).values[:, None, None], mean.flatten(1).max(-1).values[:, None, None]
    columns["mean of heads"] = (mean - lo) / (hi - lo).clamp_min(1e-12)
    return columns, {"image": True}
