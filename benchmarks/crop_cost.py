"""What the data path costs a small MAE epoch: ms per image of MAE's train transform and the eval
transform on the embedded ``cluttered`` set, with torchvision's ToImage + ToDtype + Normalize
(before 2026-12-04) and with ``ToNormalizedTensor`` (the same bits, without v2's per-call
dispatch), beside one step of MAE's ``cluttered`` preset (ViT-Ti/8, 32 px, batch 128, mask 0.75,
decoder 128 x 2, fused AdamW, fp32).

All in one process, interleaved over ``--rounds`` rounds, medians reported, so the machine's
noise (this shared machine's pace moves by 1.5x within an hour) hits each alike. The epoch share
is the data path's per-image cost times the batch, against the step; the data loader runs in
the training process (``num_workers 0``, the preset's), so it adds to the step.

    python benchmarks/crop_cost.py [--images 1000 --rounds 5 --steps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from flops import print_machine  # benchmarks/flops.py
from sslvit.data.dataset import build_dataset
from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mae_train_transform
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.mae import MAE, MAEConfig
from sslvit.runtime.cpu_allocator import keep_freed_memory

BATCH = 128


def v2_chain(transform):
    """``transform`` with its last step (ToNormalizedTensor) replaced by the v2 transforms it stands in for."""
    from torchvision.transforms import v2

    return v2.Compose([*transform.transforms[:-1], v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def ms_per_image(transform, images) -> float:
    t0 = time.perf_counter()
    for img in images:
        transform(img)
    return (time.perf_counter() - t0) / len(images) * 1e3


def mae_step():
    """-> a callable running one training step of MAE's cluttered preset on a fixed batch."""
    cfg = BackboneConfig(size="tiny", patch_size=8, img_size=32, init_values=0.1)
    model = MAE(build_backbone(cfg), MAEConfig(mask_ratio=0.75, decoder_dim=128, decoder_depth=2, decoder_heads=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    imgs = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def step():
        model(imgs)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="MAE steps timed per round")
    args = ap.parse_args()
    keep_freed_memory()  # as the training loop sets it up
    print_machine()
    images = build_dataset("cluttered", "train", 32).items[:args.images]
    train, evaluate = mae_train_transform(32, hflip=False), eval_transform(32)
    paths = {"train, v2": v2_chain(train), "train, ours": train, "eval, v2": v2_chain(evaluate), "eval, ours": evaluate}
    step = mae_step()
    for _ in range(2):
        step()
    times = {name: [] for name in [*paths, "MAE step"]}
    for _ in range(args.rounds):
        for name, tf in paths.items():
            times[name].append(ms_per_image(tf, images))
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        times["MAE step"].append((time.perf_counter() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.images} images of cluttered (32 px), {args.rounds} rounds, medians:")
    for name in paths:
        print(f"  {name:<12} {med[name]:.3f} ms/image")
    print(f"  MAE step     {med['MAE step']:.0f} ms (batch {BATCH})")
    for kind in ("train", "eval"):
        print(f"{kind}: v2 / ours = {med[f'{kind}, v2'] / med[f'{kind}, ours']:.2f}x")
    for name in ("train, v2", "train, ours"):
        data = med[name] * BATCH
        print(f"a step's {BATCH} crops ({name}) = {data / (data + med['MAE step']):.1%} of step + crops")
    saved = (med["train, v2"] - med["train, ours"]) * BATCH
    print(f"an epoch takes {(med['train, ours'] * BATCH + med['MAE step']) / (med['train, v2'] * BATCH + med['MAE step']):.3f}x "
          f"the time with ToNormalizedTensor ({saved:.0f} ms less per step)")


if __name__ == "__main__":
    main()
