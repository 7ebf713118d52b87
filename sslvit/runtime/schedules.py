"""Per-iteration schedules as plain functions of the step."""
from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> float:
    """Linear warmup from ``warmup_start`` to ``base`` over ``warmup_steps``, then half-cosine
    from ``base`` to ``final`` at ``total_steps``; constant ``final`` after it.

    Used for the learning rate (MAE, DINO), the weight decay (DINO, 0.04 -> 0.4) and the
    teacher momentum (DINO, 0.996 -> 1).
    """
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def scaled_lr(blr: float, effective_batch: int) -> float:
    """The linear scaling rule: lr = blr * effective_batch / 256."""
    return blr * effective_batch / 256
