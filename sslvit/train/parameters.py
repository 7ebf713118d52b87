"""The parameter counts a run prints in its first lines: the encoder, and each part trained
beside it (MAE's decoder, DINO's head), so a decoder far larger than its encoder shows at once."""
from __future__ import annotations

from collections import Counter

import torch.nn as nn

from sslvit.models.vit import SSLViT

CONTAINERS = ("parts", "student", "module")  # path steps that name no part: Composite, DINO's student, an EMA's copy


def _part(name: str) -> str:
    """'decoder.decoder_blocks.0.attn.qkv.weight' -> 'decoder'; 'student.head.mlp.0.weight' -> 'head';
    'parts.mae.decoder...' -> 'mae.decoder'; 'teacher.module...' -> 'teacher'; 'mask_token' -> 'mask_token'."""
    steps = name.split(".")
    inner = [s for s in steps[:-1] if s not in CONTAINERS] or steps[-1:]
    return ".".join(inner[:2]) if steps[0] == "parts" and len(inner) > 1 else inner[0]


def parameter_counts(objective: nn.Module) -> dict[str, dict[str, int]]:
    """{part: {"total": n, "trained": n}}; 'encoder' holds every trained backbone (one shared by
    two objectives counts once), the other parts are named by their module (an EMA teacher:
    'teacher', trained 0)."""
    trained_vits = [name for name, m in objective.named_modules()
                    if isinstance(m, SSLViT) and any(p.requires_grad for p in m.parameters())]
    counts: dict[str, Counter] = {"encoder": Counter()}
    for name, p in objective.named_parameters():  # shared parameters are listed once
        in_encoder = any(name.startswith(v + ".") for v in trained_vits)
        part = counts.setdefault("encoder" if in_encoder else _part(name), Counter())
        part["total"] += p.numel()
        part["trained"] += p.numel() if p.requires_grad else 0
    return {k: dict(v) for k, v in counts.items()}


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    """'Parameters: encoder 5.39 M, decoder 0.43 M, teacher 5.95 M (not trained)'."""
    def one(name: str, c: dict) -> str:
        n = c.get("total", 0)
        size = f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}"  # a mask token: 192, not 0.00 M
        return f"{name} {size}" + ("" if c.get("trained") else " (not trained)")

    return "Parameters: " + ", ".join(one(name, c) for name, c in counts.items())
