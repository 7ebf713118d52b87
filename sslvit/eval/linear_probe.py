"""Linear probe of an exported backbone on cached frozen features, a grid of lrs at once.

The backbone never changes, so its features are extracted once (or ``aug_passes`` times with
the training augmentation) and cached; every head of the lr x weight-decay grid trains on
them together. The best head on a held-out part of the train split is reported on val."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sslvit.data.dataset import build_dataset, check_labelled
from sslvit.data.transforms import eval_transform, hflip_for, mae_train_transform
from sslvit.eval.feature_cache import DEFAULT_AUG_CROP_SCALE, cached_features, feature_key
from sslvit.eval.features import extract_features, finish_probe, raw_pixel_features
from sslvit.eval.linear_heads import grid_accuracy, train_head_grid
from sslvit.files import existing, write_json_atomic
from sslvit.runtime.devices import build_accelerator

# DINOv2's linear-probe grid
DEFAULT_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
# MAE's head standardises each feature first (BatchNorm), so its best lr sits higher: MAE's own
# probe runs LARS at 0.1 x batch / 256, 6.4 at its batch of 16,384. On the embedded cluttered set
# the BN head's best lr sat at DINOv2's edge (0.1) in the short MAE runs; on a grid to 2.0 it fell
# anywhere from 0.02 to 2.0 (the probe says when it sits at an edge).
BN_HEAD_EXTRA_LRS = (0.2, 0.5, 1.0, 2.0)


@dataclass
class LinearProbeConfig:
    ckpt: str = "runs/mae-digits"  # run directory or its backbone.safetensors
    data: Optional[str] = None  # labelled data; None: the run's own
    # cls | avg | dino (cls of the last n blocks) | dino_avg (+ average pool) | blocks (BEiT's: cls and
    # average pool of each block's output, a grid per block, the best block on held-out) | pixels (the
    # raw-pixel baseline: each image's normalized pixels at the run's size, through the same heads and grid)
    recipe: str = "cls"
    n_last_blocks: int = 4
    head: str = "linear"  # linear | mae (BatchNorm1d without affine, then linear)
    optimizer: str = "sgd"  # sgd (DINO) | lars (MAE)
    # scaled by batch_size / 256 (linear scaling rule); None: DINOv2's grid, to 2.0 with --head mae
    lrs: Optional[tuple[float, ...]] = None
    weight_decays: tuple[float, ...] = (0.0,)
    epochs: int = 100
    warmup_epochs: float = 0.0
    batch_size: int = 256
    holdout_fraction: float = 0.1  # of the train split, to pick the best head
    aug_passes: int = 0  # 0: centre-crop features; N: N cached passes of RandomResizedCrop + flip
    hflip: Optional[bool] = None  # the aug passes' left-right flip; None: yes, but not the embedded digit sets
    # the aug passes' RandomResizedCrop area range; on small images where the object is a small part of the
    # frame, 0.08 crops often miss it (fine-tuning's 0.5-1)
    crop_scale: tuple[float, float] = DEFAULT_AUG_CROP_SCALE
    extract_batch_size: int = 256
    num_workers: int = 0
    seed: int = 0
    # also a random-init backbone of the run's shape (the k-NN probe's, same seed) and raw pixels,
    # through the same heads and grid: what the pretrained features are worth against doing nothing
    baselines: bool = False

    def grid_lrs(self) -> tuple[float, ...]:
        """The lrs of the grid: ``lrs`` when set, else DINOv2's, reaching 2.0 for MAE's BatchNorm head."""
        if self.lrs is not None:
            return tuple(self.lrs)
        return DEFAULT_LRS + (BN_HEAD_EXTRA_LRS if self.head == "mae" else ())

    def validate(self) -> None:
        if self.recipe not in ("cls", "avg", "dino", "dino_avg", "blocks", "pixels"):
            raise ValueError(f"recipe '{self.recipe}' is unknown; use cls, avg, dino, dino_avg, blocks or pixels.")
        if self.head not in ("linear", "mae"):
            raise ValueError(f"head '{self.head}' is unknown; use linear or mae.")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be between 0 and 1 (got {self.holdout_fraction}).")
        if self.baselines and self.recipe == "pixels":
            raise ValueError("--baselines true with --recipe pixels: the pixels recipe is itself a baseline; "
                             "probe the backbone's features (--recipe cls or avg) with --baselines true instead.")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be two area fractions 0 < low <= high <= 1 (got {self.crop_scale}); "
                             "e.g. --crop_scale [0.5,1.0].")
        if (self.lrs is not None and not self.lrs) or not self.weight_decays:
            raise ValueError("lrs and weight_decays need at least one value each.")


def run_linear_probe(cfg: LinearProbeConfig) -> dict:
    from sslvit.models.export import load_backbone, resolve_backbone_path, run_data_of  # timm: not for --help
    from sslvit.models.vit import build_backbone

    cfg.validate()
    weights = resolve_backbone_path(cfg.ckpt)
    backbone, bcfg = load_backbone(weights)
    data = cfg.data or run_data_of(weights)
    size = bcfg.img_size
    accelerator = build_accelerator()  # `accelerate launch` splits the extraction over processes
    main = accelerator.is_main_process
    train_set = build_dataset(data, "train", size, transform=eval_transform(size))
    val_set = build_dataset(data, "val", size, transform=eval_transform(size))
    check_labelled(train_set, data, "The linear probe")
    sets = (train_set, build_dataset(data, "train", size) if cfg.aug_passes > 0 else None, val_set)
    hits = []

    def cached(compute, split: str, aug_pass: Optional[int] = None):
        key = feature_key(cfg.recipe, cfg.n_last_blocks, data, split, size, aug_pass,
                          cfg.seed if aug_pass is not None else None, hflip_for(data, cfg.hflip), cfg.crop_scale)
        feats, labels, hit = cached_features(weights, compute, write=main, **key)
        hits.append(hit)
        return feats, labels

    model = None if cfg.recipe == "pixels" else backbone
    feats = _split_features(cfg, model, sets, data, size, accelerator, cached)
    baselines = {}
    if cfg.baselines:
        torch.manual_seed(cfg.seed)  # the k-NN probe's random-init baseline: the same weights
        baselines = {"random_init": _split_features(cfg, build_backbone(bcfg), sets, data, size, accelerator),
                     "raw_pixels": _split_features(cfg, None, sets, data, size, accelerator)}
    if not main:  # the heads, the scores and the files are the main process's
        return finish_probe(accelerator, None, None, weights.parent)
    parts = len(backbone.blocks) if cfg.recipe == "blocks" else 1  # BEiT's protocol: a grid per block
    rows, best, n_hold = _fit_grid(cfg, *feats, accelerator.device, parts)
    passes, _, val_x, val_y = feats
    report = {"ckpt": str(weights), "data": data, "recipe": cfg.recipe, "head": cfg.head, "optimizer": cfg.optimizer,
              "epochs": cfg.epochs, "feature_dim": int(val_x.shape[1]), "num_train": len(passes[0][1]) - n_hold,
              "num_holdout": n_hold, "num_val": len(val_y),
              "top_n": min(5, int(max(passes[0][1].max(), val_y.max())) + 1), "aug_passes": cfg.aug_passes,
              "features_from_cache": all(hits), "best": rows[best], "best_index": best, "grid": rows}
    if baselines:  # each baseline's head picked on held-out as the backbone's was
        report["baselines"] = {}
        for name, f in baselines.items():
            b_rows, b_best, _ = _fit_grid(cfg, *f, accelerator.device, parts if name == "random_init" else 1)
            report["baselines"][name] = b_rows[b_best]
    out = weights.parent / ("linear_pixels.json" if cfg.recipe == "pixels" else "linear.json")  # not the backbone's
    report["replaced"] = existing([out])
    return finish_probe(accelerator, report, lambda: write_json_atomic(report, out), out.parent)


def _split_features(cfg: LinearProbeConfig, model, sets, data: str, size: int, accelerator, cached=None):
    """-> (passes, clean train features (N, F), val features (M, F), val labels (M,)): passes is a
    list of (features (N, F), labels (N,)), one per augmented pass (or the centre crops alone).
    ``sets``: the train set (eval transform), the train set to augment (None without aug passes),
    the val set; ``model`` None: raw pixels. ``cached(compute, split, aug_pass)`` reads and writes
    the feature cache; None: no cache (a baseline's features are not the checkpoint's)."""
    train_set, aug_set, val_set = sets

    def features(dataset, split: str, aug_pass: Optional[int] = None):
        def compute():
            if aug_pass is not None:
                dataset.transform = mae_train_transform(size, scale=tuple(cfg.crop_scale),
                                                        hflip=hflip_for(data, cfg.hflip))
                torch.manual_seed(cfg.seed * 1000 + aug_pass)  # each pass is its own reproducible draw
            if model is None:
                return raw_pixel_features(dataset)
            return extract_features(model, dataset, pool=cfg.recipe, n_last_blocks=cfg.n_last_blocks,
                                    batch_size=cfg.extract_batch_size, num_workers=cfg.num_workers,
                                    desc=f"features: {split}", accelerator=accelerator)
        return compute() if cached is None else cached(compute, split, aug_pass)

    if cfg.aug_passes > 0:
        passes = [features(aug_set, "train", p) for p in range(cfg.aug_passes)]
    else:
        passes = [features(train_set, "train")]
    val_x, val_y = features(val_set, "val")
    # with augmentation, the heads are picked on centre-crop features of the held-out images
    clean_x = passes[0][0] if cfg.aug_passes == 0 else features(train_set, "train")[0]
    return passes, clean_x, val_x, val_y


def _fit_grid(cfg: LinearProbeConfig, passes, clean_x, val_x, val_y, device,
              parts: int = 1) -> tuple[list[dict], int, int]:
    """Train the lr x weight-decay grid on the fit part of the train split -> (a row per head:
    its held-out and val accuracies, the index of the best head on held-out, the held-out count).
    ``parts`` > 1: the features are that many equal blocks side by side (F = parts * F'), each gets
    its own grid, and each row names its block (1-based); the best is over every block's heads."""
    labels = passes[0][1]
    num_classes = int(max(labels.max(), val_y.max())) + 1
    # the same fixed held-out images in every pass, and for every baseline
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))
    n_hold = max(1, int(round(len(labels) * cfg.holdout_fraction)))
    hold, fit = order[:n_hold], order[n_hold:]
    grid_pairs = list(itertools.product(cfg.grid_lrs(), cfg.weight_decays))
    scale = cfg.batch_size / 256
    width = val_x.shape[1] // parts
    fit_x, hold_x = [x[fit] for x, _ in passes], clean_x[hold]  # gathered once; each block's columns are views
    rows = []
    for part in range(parts):
        cols = slice(part * width, (part + 1) * width)
        grid = train_head_grid([x[:, cols] for x in fit_x], labels[fit], num_classes,
                               [lr * scale for lr, _ in grid_pairs], [wd for _, wd in grid_pairs], cfg.epochs,
                               cfg.batch_size, cfg.optimizer, cfg.head == "mae", cfg.warmup_epochs, cfg.seed, device)
        hold_top1, _ = grid_accuracy(grid, hold_x[:, cols], labels[hold])
        val_top1, val_top5 = grid_accuracy(grid, val_x[:, cols], val_y)
        rows += [{"lr": lr, "weight_decay": wd, "lr_scaled": lr * scale, "holdout_top1": float(hold_top1[g]),
                  "val_top1": float(val_top1[g]), "val_top5": float(val_top5[g]),
                  **({"block": part + 1} if parts > 1 else {})} for g, (lr, wd) in enumerate(grid_pairs)]
    best = max(range(len(rows)), key=lambda i: rows[i]["holdout_top1"])  # the first of equals, as argmax
    return rows, best, n_hold


def format_report(report: dict) -> str:
    b, n = report["best"], report.get("top_n", 5)  # top-5 is top-min(5, classes); the column says which
    per_block = "block" in b
    what = "raw pixels (the baseline)" if report["recipe"] == "pixels" else f"{report['recipe']} features"
    lines = [f"linear probe ({what}, {report['feature_dim']}-d, {report['head']} head, "
             f"{report['optimizer']}, {report['epochs']} epochs"
             f"{' on {} augmented passes'.format(report['aug_passes']) if report.get('aug_passes') else ''}; "
             f"{report['num_train']} train / "
             f"{report['num_holdout']} held out / {report['num_val']} val"
             f"{'; features from cache' if report['features_from_cache'] else ''})",
             f"{'block':>6}" * per_block + f"{'lr':>10}{'wd':>10}{'held-out':>10}{'val top-1':>11}{f'val top-{n}':>11}"]
    for i, r in _shown_rows(report["grid"]):
        mark = "  <- best on held-out" if i == report["best_index"] else ""
        lines.append(f"{r.get('block', ''):>6}" * per_block + f"{r['lr']:>10.0e}{r['weight_decay']:>10.0e}"
                     f"{r['holdout_top1']:>10.2f}{r['val_top1']:>11.2f}{r['val_top5']:>11.2f}{mark}")
    lrs = sorted({r["lr"] for r in report["grid"]})
    if len(lrs) > 1 and b["lr"] in (lrs[0], lrs[-1]):
        lines.append(f"note: the best lr ({b['lr']:g}) is at the edge of the grid; widen --lrs beyond it.")
    written = "linear_pixels.json" if report["recipe"] == "pixels" else "linear.json"
    where = f"block {b['block']}, " if per_block else ""
    lines.append(f"val top-1 {b['val_top1']:.2f}, top-{n} {b['val_top5']:.2f} ({where}lr {b['lr']:g}, "
                 f"wd {b['weight_decay']:g}) -> {Path(report['ckpt']).parent / written}")
    if report.get("baselines"):
        lines += ["", "the same heads and grid on other features (each head picked on held-out):",
                  f"{'features':<14}{'val top-1':>11}{f'val top-{n}':>11}{'lr':>10}"]
        for name, r in {"pretrained": b, **report["baselines"]}.items():
            lines.append(f"{name:<14}{r['val_top1']:>11.2f}{r['val_top5']:>11.2f}{r['lr']:>10.0e}")
    return "\n".join(lines)


def _shown_rows(rows: list[dict]) -> list[tuple[int, dict]]:
    """The rows the report prints, with their indices: every head, or with a grid per block
    (BEiT's protocol) each block's best on held-out."""
    if "block" not in rows[0]:
        return list(enumerate(rows))
    best: dict[int, tuple[int, dict]] = {}
    for i, r in enumerate(rows):
        if r["block"] not in best or r["holdout_top1"] > best[r["block"]][1]["holdout_top1"]:
            best[r["block"]] = (i, r)
    return list(best.values())
