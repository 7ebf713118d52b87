"""timm's ``Attention`` with one kernel choice of its own: explicit softmax(QK^T)V where torch's
fused CPU kernel is slow.

On CPU, ``F.scaled_dot_product_attention`` in bf16 runs a flash kernel whose backward is much
slower than the three explicit ops for the sequences small images give (fwd + bwd, 2-core Xeon
with AMX, benchmarks/attention_kernel.py: 5 tokens 2.0x, 17 tokens 6.4x, 50 tokens 4.6x, ViT-S/16
at 224 px's 197 tokens 2.1x, 257-577 tokens 1.5-1.8x, 785 tokens 1.2x, where a first trial had
the fused kernel ahead, 0.72x), while in fp32 the fused kernel is as fast or faster. So training steps
under CPU bf16 (or fp16) with at most ``MAX_EXPLICIT_TOKENS`` tokens take the explicit path;
everything else (fp32, GPUs, inference, long sequences, whose explicit attention matrix also
grows as tokens^2) keeps timm's choice. Both paths compute the same attention: the parameters,
their names and the state dict are timm's, and a backbone built with timm's own ``Attention``
loads these weights unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import Attention as TimmAttention

# the longest sequence that takes the explicit path: past ViT-B/16's 197 tokens at 224 px, below
# where the fused kernel wins again (somewhere above 577 tokens, and it moves with the machine)
MAX_EXPLICIT_TOKENS = 256
RULE = f"explicit attention for CPU bf16/fp16 training up to {MAX_EXPLICIT_TOKENS} tokens"
_HALF = (torch.bfloat16, torch.float16)


def explicit_is_faster(x: torch.Tensor) -> bool:
    """x (B, N, D), the attention's input: whether this call is a CPU half-precision training
    step on a short sequence, where the explicit kernels beat the fused one."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or x.shape[1] > MAX_EXPLICIT_TOKENS:
        return False
    return x.dtype in _HALF or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _HALF)


class Attention(TimmAttention):
    """timm's multi-head self-attention (``attn_layer`` of its ``Block``); (B, N, D) -> (B, N, D).
    ``fused_attn`` keeps timm's meaning (its default, TIMM_FUSED_ATTN, or what a caller sets);
    where it is on, a call that ``explicit_is_faster`` runs the explicit ops just this once."""

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        if not (self.fused_attn and explicit_is_faster(x)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        self.fused_attn = False
        try:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        finally:
            self.fused_attn = True
