"""What the data path costs a small MAE epoch: ms per image of MAE's train transform and the eval
transform on the embedded ``cluttered`` set, with torchvision's ToImage + ToDtype + Normalize
(before 2026-12-04) and with ``ToNormalizedTensor`` (the same bits, without v2's per-call
dispatch), beside one step of MAE's ``cluttered`` preset as ``pretrain/mae.py --data cluttered``
builds it (ViT-Ti/8, 32 px, batch 128, mask 0.75, its decoder; fused AdamW, fp32). Also DINO's
``cluttered`` multi-crop (2 global + 2 local crops an image) with every crop grey as its preset
has it (``crops.grayscale_p 1``: one channel from the first op, since 2026-12-05) against
``grayscale_p 0.999``, which takes the colour path (jitter on RGB, then RandomGrayscale): the
path every grey crop took before; and DINO's crops made a batch at a time (``crops.batched``, since
2026-12-05): the per-image draw plus the batch's collate, per image, at the preset's batch (64).

All in one process, interleaved over ``--rounds`` rounds, medians reported, so the machine's
noise (this shared machine's pace moves by 1.5x within an hour) hits each alike. The epoch share
is the data path's per-image cost times the batch, against the step; the data loader runs in
the training process (``num_workers 0``, the preset's), so it adds to the step.

    python benchmarks/crop_cost.py [--images 1000 --rounds 5 --steps 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from flops import print_machine  # benchmarks/flops.py
from sslvit.data.dataset import build_dataset
from sslvit.data.multicrop import MultiCropTransform, multicrop_data
from sslvit.data.transforms import eval_transform, mae_train_transform, v2_normalized_tensor
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.mae import MAERunConfig
from sslvit.runtime.cpu_allocator import keep_freed_memory
from sslvit.train.entry import run_config


def v2_chain(transform):
    """``transform`` with its last step (ToNormalizedTensor) replaced by the v2 transforms it stands in for."""
    from torchvision.transforms import v2

    return v2.Compose([*transform.transforms[:-1], *v2_normalized_tensor()])


def ms_per_image(transform, images) -> float:
    t0 = time.perf_counter()
    for img in images:
        transform(img)
    return (time.perf_counter() - t0) / len(images) * 1e3


def ms_per_image_batched(crops, images, batch: int) -> float:
    """``crops`` = (per-sample draw, collate): both, per image, over batches of ``batch``."""
    draw, collate = crops
    t0 = time.perf_counter()
    for start in range(0, len(images) - batch + 1, batch):
        collate([(draw(img), 0, 0) for img in images[start:start + batch]])
    return (time.perf_counter() - t0) / (len(images) // batch * batch) * 1e3


def mae_step(cfg: MAERunConfig):
    """-> a callable running one training step of ``cfg``'s MAE on a fixed batch of its size."""
    model = cfg.build_objective()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    imgs = torch.randn(cfg.train.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))

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
    dino = run_config(DINORunConfig, preset="dino", argv=["--data", "cluttered"]).crops  # as the entry scripts build
    paths["dino, grey"] = MultiCropTransform(32, dino, hflip=False)
    paths["dino, colour"] = MultiCropTransform(32, dataclasses.replace(dino, grayscale_p=0.999), hflip=False)
    batched = {"dino, batched": multicrop_data(32, dataclasses.replace(dino, batched=True), hflip=False),
               "dino, colour batched": multicrop_data(32, dataclasses.replace(dino, batched=True, grayscale_p=0.999),
                                                      hflip=False)}
    dino_batch = run_config(DINORunConfig, preset="dino", argv=["--data", "cluttered"]).train.batch_size
    cfg = run_config(MAERunConfig, preset="mae", argv=["--data", "cluttered"])
    step, batch = mae_step(cfg), cfg.train.batch_size
    for _ in range(2):
        step()
    times = {name: [] for name in [*paths, *batched, "MAE step"]}
    for _ in range(args.rounds):
        for name, tf in paths.items():
            times[name].append(ms_per_image(tf, images))
        for name, crops in batched.items():
            times[name].append(ms_per_image_batched(crops, images, dino_batch))
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        times["MAE step"].append((time.perf_counter() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.images} images of cluttered (32 px), {args.rounds} rounds, medians:")
    for name in [*paths, *batched]:
        print(f"  {name:<12} {med[name]:.3f} ms/image")
    print(f"  MAE step     {med['MAE step']:.0f} ms (batch {batch})")
    for kind in ("train", "eval"):
        print(f"{kind}: v2 / ours = {med[f'{kind}, v2'] / med[f'{kind}, ours']:.2f}x")
    print(f"DINO's preset crops of an image: colour path / grey first = {med['dino, colour'] / med['dino, grey']:.2f}x")
    print(f"DINO's preset crops, per image / batched (batch {dino_batch}): "
          f"grey {med['dino, grey'] / med['dino, batched']:.2f}x, "
          f"colour {med['dino, colour'] / med['dino, colour batched']:.2f}x")
    for name in ("train, v2", "train, ours"):
        data = med[name] * batch
        print(f"a step's {batch} crops ({name}) = {data / (data + med['MAE step']):.1%} of step + crops")
    saved = (med["train, v2"] - med["train, ours"]) * batch
    print("an epoch takes "
          f"{(med['train, ours'] * batch + med['MAE step']) / (med['train, v2'] * batch + med['MAE step']):.3f}x "
          f"the time with ToNormalizedTensor ({saved:.0f} ms less per step)")


if __name__ == "__main__":
    main()
