"""k-NN probe of an exported backbone, next to raw pixels and a random-init backbone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch  # before faiss: faiss imported first makes forked workers that call it hang

from sslvit.data.dataset import build_dataset
from sslvit.data.transforms import eval_transform
from sslvit.eval.features import extract_features, raw_pixel_features
from sslvit.eval.knn import KS, TEMPERATURE, knn_classify
from sslvit.models.export import load_backbone, resolve_backbone_path, run_data_of
from sslvit.models.vit import build_backbone
from sslvit.train.checkpoint import write_json_atomic


@dataclass
class KNNProbeConfig:
    ckpt: str = "runs/mae-digits"  # run directory or its backbone.safetensors
    data: Optional[str] = None  # labelled data; None: the run's own (from its config.yaml)
    pool: str = "cls"  # cls | avg
    ks: tuple[int, ...] = KS
    temperature: float = TEMPERATURE
    batch_size: int = 256
    num_workers: int = 0
    baselines: bool = True  # also score raw pixels and a random-init backbone of the same shape
    seed: int = 0


def run_knn_probe(cfg: KNNProbeConfig) -> dict:
    weights = resolve_backbone_path(cfg.ckpt)
    backbone, bcfg = load_backbone(weights)
    data = cfg.data or run_data_of(weights)
    tf = eval_transform(bcfg.img_size)
    train_set = build_dataset(data, "train", bcfg.img_size, transform=tf)
    val_set = build_dataset(data, "val", bcfg.img_size, transform=tf)
    if min(train_set.labels) < 0:
        raise ValueError(f"The k-NN probe needs labels, and '{data}' has none; pass --data with a folder whose "
                         "images sit in one sub-folder per class (optionally under train/ and val/).")
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def score(feats_train, y_train, feats_val, y_val):
        return knn_classify(feats_train.numpy(), y_train.numpy(), feats_val.numpy(), y_val.numpy(),
                            ks=cfg.ks, temperature=cfg.temperature)

    def backbone_scores(model, name):
        kw = dict(pool=cfg.pool, batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=device)
        ftr, ytr = extract_features(model, train_set, desc=f"{name}: train", **kw)
        fva, yva = extract_features(model, val_set, desc=f"{name}: val", **kw)
        return score(ftr, ytr, fva, yva)

    results = {"pretrained": backbone_scores(backbone, "pretrained")}
    if cfg.baselines:
        torch.manual_seed(cfg.seed)
        results["random_init"] = backbone_scores(build_backbone(bcfg), "random init")
        ftr, ytr = raw_pixel_features(train_set)
        fva, yva = raw_pixel_features(val_set)
        results["raw_pixels"] = score(ftr, ytr, fva, yva)
    report = {"ckpt": str(weights), "data": data, "pool": cfg.pool, "temperature": cfg.temperature,
              "num_train": len(train_set), "num_val": len(val_set), "results": results}
    write_json_atomic(report, weights.parent / "knn.json")
    return report


def format_table(report: dict) -> str:
    rows = [f"k-NN ({report['num_train']} train / {report['num_val']} val, pool={report['pool']}, "
            f"T={report['temperature']})", f"{'features':<14}{'k':>6}{'top-1':>9}{'top-5':>9}"]
    for name, by_k in report["results"].items():
        for k, r in by_k.items():
            rows.append(f"{name:<14}{k:>6}{r['top1']:>9.2f}{r['top5']:>9.2f}")
    return "\n".join(rows)

