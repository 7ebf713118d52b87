"""Memory that ``model.grad_checkpointing`` saves, and the time it costs, at ViT-B/16 on 224 px.

    python benchmarks/grad_checkpointing.py [--batch 16] [--steps 2]

One training step (forward, backward, fused AdamW) of each objective's encoder path, each
configuration in a fresh process: the MAE encoder on the 25% visible patches plus its 8-block
decoder, the BEiT-style encoder over all 196 patches with mask tokens, and DINO's full forward
(timm's own forward_features, which checkpoints the same way). Memory is what the steps add to
the process's peak over the built model: CUDA's max_memory_allocated on a GPU; on a CPU the
peak resident set (ru_maxrss) minus the resident set before the first step. "activations"
takes off the gradients and AdamW's moments (12 bytes a parameter, the same either way).
Ratios are on vs off, measured in this one run.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def _rss_mb() -> float:
    return float(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def child(objective: str, on: bool, batch: int, steps: int) -> dict:
    import torch

    from sslvit.models.vit import BackboneConfig, build_backbone
    from sslvit.objectives.base import StepInfo
    from sslvit.objectives.beit import BEiT, BEiTConfig
    from sslvit.objectives.mae import MAE, MAEConfig
    from sslvit.runtime.devices import process_state
    from sslvit.tokenizers.pixel import PixelTokenizer
    from sslvit.train.optim import build_adamw

    device = process_state().device
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(size="base", patch_size=16, img_size=224, grad_checkpointing=on))
    if objective == "mae":
        model = MAE(backbone, MAEConfig())
    elif objective == "beit":
        model = BEiT(backbone, PixelTokenizer(8192, 16), BEiTConfig())
    else:
        model = backbone
    model = model.to(device).train()
    opt = build_adamw(model, 1e-4, 0.05)
    imgs = torch.randn(batch, 3, 224, 224, device=device)

    def step():
        if objective == "mae":
            model.before_micro_batch(StepInfo(0, 0, 0, 1, 1, 0, slice(0, batch), batch))
        loss = model(imgs)["loss"] if objective != "dino" else model.forward_features(imgs)[:, 0].square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mb()
    step()  # allocates gradients and the optimizer state, warms the allocator
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # gradients (4 B) and AdamW's two moments (8 B) per parameter are the same with or without it
    state_mb = 12 * sum(p.numel() for p in model.parameters() if p.requires_grad) / 2**20
    return {"added_mb": peak - before, "activations_mb": peak - before - state_mb,
            "step_s": (time.perf_counter() - t0) / steps, "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "on", args.batch, args.steps)))
        return
    from flops import print_machine

    print_machine()
    print(f"ViT-B/16, 224 px, batch {args.batch}, fp32, one fresh process per row, {args.steps} timed steps")
    print(f"{'objective':<10}{'checkpointing':>14}{'step adds MB':>14}{'activations MB':>16}{'step s':>9}")
    for objective in ("mae", "beit", "dino"):
        res = {}
        for on in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", objective, on, "--batch", str(args.batch),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            res[on] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[on]
            print(f"{objective:<10}{on:>14}{r['added_mb']:>14.0f}{r['activations_mb']:>16.0f}{r['step_s']:>9.2f}",
                  flush=True)
        on, off = res["on"], res["off"]
        print(f"{'':<10}{'on / off':>14}{on['added_mb'] / off['added_mb']:>14.2f}"
              f"{on['activations_mb'] / off['activations_mb']:>16.2f}{on['step_s'] / off['step_s']:>9.2f}"
              f"  ({on['device']})")


if __name__ == "__main__":
    main()
