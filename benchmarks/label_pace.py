"""How fast labels teach a backbone shape on an embedded set, in a fixed wall-clock budget: an upper
bound on what any self-supervised recipe of that shape and budget can reach, and a check on the
fine-tuning probe's recipe (the same shape through `probes/finetune.py` learns far slower).

    python benchmarks/label_pace.py [--budget 120] [--data cluttered]
        [--shapes "depth=12 depth=6 depth=6,lr=2e-3"]

Each shape (keys of BackboneConfig at ViT-Ti/8, 32 px, plus lr) trains from random init with a
bare loop: AdamW (wd 0.05), batch 64, 10 % linear warm-up then cosine over the steps the budget
holds (timed on the first 10), label smoothing 0.1, a random shift of up to 4 px as the only
augmentation, average-pooled features and a linear head; then val top-1 on the whole val split.
The loop is written here, not taken from the probe, on purpose: it is the control the probe is
measured against.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flops import print_machine  # noqa: E402
from sslvit.data.dataset import build_dataset  # noqa: E402
from sslvit.models.backbone_config import BackboneConfig  # noqa: E402
from sslvit.models.vit import build_backbone  # noqa: E402

BATCH, SHIFT = 64, 4


def tensors(data: str, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) images standardised per channel (train statistics) and (N,) labels."""
    ds = build_dataset(data, split, size)
    x = torch.stack([torch.from_numpy(np.asarray(ds[i][0].convert("RGB")).copy())  # (image, label, skipped)
                     for i in range(len(ds))]).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(ds.labels)


def shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same batch moved by one random offset of up to SHIFT px (edges repeated)."""
    h, w = x.shape[-2:]
    x = F.pad(x, (SHIFT,) * 4, mode="replicate")
    i, j = np.random.randint(0, 2 * SHIFT + 1, size=2)
    return x[:, :, i:i + h, j:j + w]


def train(shape: dict, lr: float, budget: float, xt, yt, xv, yv) -> dict:
    """Train one shape for ``budget`` seconds; -> steps, epochs, seconds, val top-1."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=xt.shape[-1], **shape))
    head = torch.nn.Linear(model.embed_dim, int(yt.max()) + 1)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    t0, step, total = time.perf_counter(), 0, None
    while total is None or step < total:
        order = torch.randperm(len(xt))
        for k in range(0, len(xt) - BATCH + 1, BATCH):
            if step == 10:  # the budget in steps, from the pace of the first 10
                total = max(11, int(budget / ((time.perf_counter() - t0) / 10)))
            horizon = total or 10**9
            scale = min(1.0, step / max(1.0, 0.1 * horizon)) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            idx = order[k:k + BATCH]
            loss = F.cross_entropy(head(model.features(shift(xt[idx]), "avg")), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if total is not None and step >= total:
                break
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        top1 = (head(model.features(xv, "avg")).argmax(1) == yv).float().mean().item() * 100
    return {"steps": step, "epochs": step * BATCH / len(xt), "seconds": seconds, "top1": top1}


def parse_shape(spec: str) -> tuple[dict, float]:
    """'depth=6,lr=2e-3' -> ({'depth': 6}, 0.002); lr defaults to 1e-3."""
    keys = dict(item.split("=", 1) for item in spec.split(",") if item)
    lr = float(keys.pop("lr", 1e-3))
    return {k: int(v) if v.lstrip("-").isdigit() else v for k, v in keys.items()}, lr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per shape")
    p.add_argument("--data", default="cluttered")
    p.add_argument("--img_size", type=int, default=32)
    p.add_argument("--shapes", default="depth=12 depth=6 depth=6,lr=2e-3")
    args = p.parse_args()
    print_machine(f"data {args.data}, budget {args.budget:.0f} s a shape, batch {BATCH}")
    xt, yt = tensors(args.data, "train", args.img_size)
    xv, yv = tensors(args.data, "val", args.img_size)
    mean, std = xt.mean((0, 2, 3), keepdim=True), xt.std((0, 2, 3), keepdim=True)
    xt, xv = (xt - mean) / std, (xv - mean) / std
    print("| shape | steps | epochs | seconds | val top-1 |\n|---|---|---|---|---|")
    for spec in args.shapes.split():
        shape, lr = parse_shape(spec)
        r = train(shape, lr, args.budget, xt, yt, xv, yv)
        print(f"| ViT-Ti/8 {spec} | {r['steps']} | {r['epochs']:.1f} | {r['seconds']:.0f} | {r['top1']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
