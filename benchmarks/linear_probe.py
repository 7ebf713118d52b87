"""Wall time of a linear probe on cached features vs the same probe re-running the frozen
backbone every epoch (what DINO's ``eval_linear.py`` and MAE's ``main_linprobe.py`` do).

Setup: ViT-S/16 (random init: no pretrained ViT-S ships offline; the features are frozen
either way), the embedded digits at ``--img`` px (1,500 train / 297 val), the probe's own
``train_head_grid`` (SGD, cosine, batch 256), no augmentation.

  cached:   one backbone pass over train and val, then ``--epochs`` epochs of the heads.
  re-run:   a backbone pass over the train set every epoch, then that epoch of the heads.
            Without augmentation every pass gives the same features, so both probes train
            the same heads on the same numbers and reach the same accuracy; the benchmark
            checks that on ``--rerun-epochs`` epochs (run both ways) and extrapolates the
            re-run wall time to ``--epochs`` from its measured per-epoch backbone time (the
            backbone pass is the same work every epoch).
Also: the cost of the 13-lr grid against a single head on the same cached features.

    python benchmarks/linear_probe.py [--epochs 90 --rerun-epochs 3 --img 64 --threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from flops import print_machine  # benchmarks/flops.py
from sslvit.data.dataset import build_dataset
from sslvit.data.transforms import eval_transform
from sslvit.eval.features import extract_features
from sslvit.eval.linear_heads import grid_accuracy, train_head_grid
from sslvit.eval.linear_probe import DEFAULT_LRS
from sslvit.models.vit import BackboneConfig, build_backbone


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=90)
    ap.add_argument("--rerun-epochs", type=int, default=3)
    ap.add_argument("--img", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    print_machine()
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(size="small", patch_size=16, img_size=args.img)).eval()
    tf = eval_transform(args.img)
    train, val = build_dataset("digits", "train", args.img, tf), build_dataset("digits", "val", args.img, tf)
    lrs, wds = list(DEFAULT_LRS), [0.0] * len(DEFAULT_LRS)
    print(f"ViT-S/16 at {args.img} px, {len(train)} train / {len(val)} val digits, {len(lrs)}-lr grid, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads")

    def heads(passes, labels, epochs, grid_lrs, grid_wds):
        t = time.perf_counter()
        grid = train_head_grid(passes, labels, 10, grid_lrs, grid_wds, epochs, 256, seed=0)
        return grid, time.perf_counter() - t

    def backbone_pass(dataset):
        t = time.perf_counter()
        feats, labels = extract_features(backbone, dataset, pool="cls", batch_size=256, desc="backbone")
        return feats, labels, time.perf_counter() - t

    # cached: one pass each over train and val, then all epochs on the cached features
    ftr, ytr, t_train_pass = backbone_pass(train)
    fva, yva, t_val_pass = backbone_pass(val)
    grid, t_heads = heads([ftr], ytr, args.epochs, lrs, wds)
    top1, _ = grid_accuracy(grid, fva, yva)
    cached_time = t_train_pass + t_val_pass + t_heads
    best = int(top1.argmax())

    # re-run: a backbone pass per epoch (measured for rerun-epochs), the heads on each epoch's features
    passes, pass_times = [], []
    for _ in range(args.rerun_epochs):
        f, _, t = backbone_pass(train)
        passes.append(f)
        pass_times.append(t)
    grid_re, t_heads_re = heads(passes, ytr, args.rerun_epochs, lrs, wds)
    grid_short, _ = heads([ftr], ytr, args.rerun_epochs, lrs, wds)
    top1_re, _ = grid_accuracy(grid_re, fva, yva)
    top1_short, _ = grid_accuracy(grid_short, fva, yva)
    per_pass = sum(pass_times) / len(pass_times)
    rerun_time = args.epochs * per_pass + t_val_pass + t_heads  # the head work is the same as cached

    # one head vs the grid on the cached features
    _, t_one = heads([ftr], ytr, args.epochs, [lrs[best]], [0.0])

    print(f"backbone pass over train: {per_pass:.2f} s (re-run, mean of {len(pass_times)}), "
          f"{t_train_pass:.2f} s (cached)")
    print(f"cached probe, {args.epochs} epochs:  {cached_time:8.1f} s  (passes {t_train_pass + t_val_pass:.1f} s + "
          f"heads {t_heads:.1f} s)")
    print(f"re-run probe, {args.epochs} epochs:  {rerun_time:8.1f} s  (extrapolated: {args.epochs} x {per_pass:.2f} s "
          f"+ val pass + the same head work)")
    print(f"speed-up cached / re-run: {rerun_time / cached_time:.1f}x  (goal >= 50x)")
    diff = (top1_re - top1_short).abs().max().item()
    print(f"accuracy after {args.rerun_epochs} epochs, best head: re-run {top1_re.max():.2f}, cached "
          f"{top1_short.max():.2f}; largest difference over the grid {diff:.2f} points (goal <= 0.5)")
    print(f"cached probe after {args.epochs} epochs: best val top-1 {top1[best]:.2f} (lr {lrs[best]:g})")
    print(f"lr grid ({len(lrs)} heads) {t_heads:.2f} s vs one head {t_one:.2f} s: {t_heads / t_one:.1f}x the time "
          f"for {len(lrs)}x the heads")


if __name__ == "__main__":
    main()
