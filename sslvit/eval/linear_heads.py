"""A grid of linear heads trained at once on the same cached features (DINOv2's lr grid).

Every head has its own weights, learning rate and weight decay; the loss is the sum of the
heads' own losses, so each head's gradient is exactly what it would get alone. torch has no
LARS (MAE's linear-probe optimizer); ``LARS`` below follows MAE's ``util/lars.py``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslvit.runtime.schedules import cosine_schedule


class LinearHeadGrid(nn.Module):
    """G linear heads F -> C over the same features: (N, F) -> logits (G, N, C).

    ``batchnorm``: the features first pass a BatchNorm1d without affine (MAE's probe head). It
    has no parameters, so one shared instance keeps the heads independent. Every head starts
    from the same initial weights (trunc-normal, std 0.01; zero bias)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, batchnorm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        w0 = nn.init.trunc_normal_(torch.empty(num_classes, dim), std=0.01)
        self.weights = nn.ParameterList([nn.Parameter(w0.clone()) for _ in range(num_heads)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_classes)) for _ in range(num_heads)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        w = torch.stack(list(self.weights))  # (G, C, F)
        b = torch.stack(list(self.biases))  # (G, C)
        return torch.einsum("nf,gcf->gnc", x, w) + b[:, None]


class LARS(torch.optim.Optimizer):
    """SGD with momentum where each matrix's update is rescaled by
    trust_coefficient * ||w|| / ||grad + wd * w|| (You et al. 2017; MAE's linear probe).
    Vectors (biases) get plain momentum SGD without weight decay, as in MAE."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(update_norm > 0, g["trust_coefficient"] * param_norm / update_norm, one)
                    q = torch.where(param_norm > 0.0, trust, one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def train_head_grid(passes: Sequence[torch.Tensor], labels: torch.Tensor, num_classes: int, lrs: Sequence[float],
                    weight_decays: Sequence[float], epochs: int, batch_size: int, optimizer: str = "sgd",
                    batchnorm: bool = False, warmup_epochs: float = 0.0, seed: int = 0,
                    device: str | torch.device = "cpu") -> LinearHeadGrid:
    """Train one head per (lr, weight decay) pair on cached features.

    passes: P tensors (N, F), the features of P augmented passes over the same N images (P = 1
    without augmentation); epoch e trains on pass e mod P. labels (N,). The batches are a
    seeded permutation per epoch; lr follows warmup + cosine to 0 per step."""
    if len(lrs) != len(weight_decays):
        raise ValueError("lrs and weight_decays must have one entry per head.")
    n, dim = passes[0].shape
    torch.manual_seed(seed)
    grid = LinearHeadGrid(dim, num_classes, len(lrs), batchnorm).to(device)
    groups = [{"params": [grid.weights[g], grid.biases[g]], "lr": lrs[g], "weight_decay": weight_decays[g]}
              for g in range(len(lrs))]
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    elif optimizer == "lars":
        opt = LARS(groups)
    else:
        raise ValueError(f"optimizer '{optimizer}' is unknown; use sgd or lars.")
    labels = labels.to(device)
    steps_per_epoch = math.ceil(n / batch_size)
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    grid.train()
    for epoch in range(epochs):
        x_all = passes[epoch % len(passes)].to(device)
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size].to(device)
            for g, base in zip(opt.param_groups, lrs):
                g["lr"] = cosine_schedule(step, total, base, 0.0, warmup)
            logits = grid(x_all[idx])
            loss = sum(F.cross_entropy(logits[h], labels[idx]) for h in range(logits.shape[0]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return grid


@torch.no_grad()
def grid_accuracy(grid: LinearHeadGrid, feats: torch.Tensor, labels: torch.Tensor,
                  batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """-> top-1 and top-5 accuracy in % per head, each (G,). top-5 is top-min(5, C)."""
    grid.eval()
    device = grid.weights[0].device
    top1 = top5 = 0
    for i in range(0, feats.shape[0], batch_size):
        logits = grid(feats[i:i + batch_size].to(device))  # (G, n, C)
        y = labels[i:i + batch_size].to(device)
        order = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        top1 = top1 + (order[..., 0] == y).float().sum(1)
        top5 = top5 + (order == y[:, None]).any(-1).float().sum(1)
    return (top1 / feats.shape[0] * 100).cpu(), (top5 / feats.shape[0] * 100).cpu()
