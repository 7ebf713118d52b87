"""AdamW with weight decay only where it belongs."""
from __future__ import annotations

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases, norm parameters, tokens and position embeddings
    (1-D parameters and the names the model lists in ``no_weight_decay()``) without decay.
    Frozen parameters are left out."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    # fused=True: one kernel per step on CPU and GPU. On this project's 2-core CPU, ViT-S + MAE
    # decoder: fused 33 ms, foreach 195 ms (benchmarks/mae_step.py); torch's CPU default is a loop.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=True)


@torch.no_grad()
def clip_grad_per_param_(parameters, max_norm: float) -> torch.Tensor:
    """Scale each parameter's gradient down to norm ``max_norm`` on its own (DINO's
    ``clip_gradients``), unlike ``clip_grad_norm_``'s one norm over all parameters.
    -> the total norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    coefs = [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def init_adamw_state(optimizer: torch.optim.AdamW) -> None:
    """Give every parameter the state AdamW creates before its first update (step 0, zero
    moments), so a parameter it has not updated yet has one too.

    FSDP needs it: torch.distributed.checkpoint loads an optimizer by first giving every
    parameter a state and then requiring each in the file, so a checkpoint taken while a
    parameter had none (DINO's last layer while ``freeze_last_layer`` drops its gradient) fails
    to resume ("Missing key in checkpoint state_dict: optimizer.state.student.head.last_layer..."). AdamW
    updates a parameter with this state exactly as one it creates the state for itself."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the AdamW
    for group in optimizer.param_groups:
        for p in group["params"]:
            if optimizer.state.get(p):
                continue
            # where AdamW keeps ``step``: on the parameter's device when fused or capturable
            on_device = group["fused"] or group["capturable"]
            step = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
            state = {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
            optimizer.state[p] = state
