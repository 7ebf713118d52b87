"""k-NN probe of an exported backbone, next to raw pixels and a random-init backbone:
classification (DINO's weighted vote) and retrieval of same-class images, one search each."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch  # before faiss: faiss imported first makes forked workers that call it hang

from sslvit.data.dataset import build_dataset, check_labelled, items_at
from sslvit.data.sample import spread_order
from sslvit.data.transforms import eval_transform
from sslvit.eval.feature_cache import cached_features, feature_key
from sslvit.eval.features import extract_features, finish_probe, raw_pixel_features
from sslvit.eval.knn import KS, TEMPERATURE, knn_classify, knn_search
from sslvit.eval.retrieval import neighbours_picture, retrieval_metrics
from sslvit.files import existing, write_json_atomic
from sslvit.runtime.devices import build_accelerator


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
    picture_queries: int = 8  # rows of knn_neighbours.png (query + its 8 nearest); 0: no picture
    index: str = "auto"  # faiss index: auto (exact below 200,000 train images, else IVF) | flat | ivf


def run_knn_probe(cfg: KNNProbeConfig) -> dict:
    from sslvit.models.export import load_backbone, resolve_backbone_path, run_data_of  # timm: not for --help
    from sslvit.models.vit import build_backbone

    if cfg.index not in ("auto", "flat", "ivf"):
        raise ValueError(f"index '{cfg.index}' is unknown; use auto, flat or ivf.")
    weights = resolve_backbone_path(cfg.ckpt)
    backbone, bcfg = load_backbone(weights)
    data = cfg.data or run_data_of(weights)
    tf = eval_transform(bcfg.img_size)
    train_set = build_dataset(data, "train", bcfg.img_size, transform=tf)
    val_set = build_dataset(data, "val", bcfg.img_size, transform=tf)
    check_labelled(train_set, data, "The k-NN probe")
    accelerator = build_accelerator()  # `accelerate launch` splits the extraction over processes
    main = accelerator.is_main_process

    results, retrieval = {}, {}

    def score(name, feats_train, y_train, feats_val, y_val):
        args = (feats_train.numpy(), y_train.numpy(), feats_val.numpy(), y_val.numpy())
        results[name] = knn_classify(*args, ks=cfg.ks, temperature=cfg.temperature, index_kind=cfg.index)
        retrieval[name] = retrieval_metrics(*args)

    def features_of(model, name, dataset, split):
        return extract_features(model, dataset, pool=cfg.pool, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                desc=f"{name}: {split}", accelerator=accelerator)

    def cached(split, dataset):  # the same key fields as the linear probe's, so each reuses the other's
        key = feature_key(cfg.pool, 4, data, split, bcfg.img_size)
        return cached_features(weights, lambda: features_of(backbone, "pretrained", dataset, split), write=main,
                               **key)[:2]

    feats = (*cached("train", train_set), *cached("val", val_set))
    if cfg.baselines:
        torch.manual_seed(cfg.seed)
        random_init = build_backbone(bcfg)
        random_feats = (*features_of(random_init, "random init", train_set, "train"),
                        *features_of(random_init, "random init", val_set, "val"))
    if not main:  # the search, the scores and the files are the main process's
        return finish_probe(accelerator, None, None, weights.parent)
    score("pretrained", *feats)
    if cfg.baselines:
        score("random_init", *random_feats)
        score("raw_pixels", *raw_pixel_features(train_set), *raw_pixel_features(val_set))
    report = {"ckpt": str(weights), "data": data, "pool": cfg.pool, "temperature": cfg.temperature,
              "num_train": len(feats[1]), "num_val": len(feats[3]), "results": results, "retrieval": retrieval,
              "replaced": existing([weights.parent / "knn.json"] +
                                   ([weights.parent / "knn_neighbours.png"] if cfg.picture_queries > 0 else []))}

    def write() -> None:
        if cfg.picture_queries > 0:
            picture = _neighbours_picture(feats, train_set, val_set, cfg, weights.parent / "knn_neighbours.png",
                                          _picture_caption(weights, results["pretrained"]))
            report["picture"] = str(picture)
        write_json_atomic(report, weights.parent / "knn.json")

    return finish_probe(accelerator, report, write, weights.parent)


def _neighbours_picture(feats, train_set, val_set, cfg: KNNProbeConfig, path, caption: str):
    """knn_neighbours.png: a seeded sample of val queries spread over the classes, each with its
    8 nearest train images."""
    ftr, ytr, fva, yva = feats
    picked = spread_order(yva.numpy(), cfg.picture_queries, cfg.seed)
    queries = items_at(val_set, picked)
    sims, nbrs = knn_search(ftr.numpy(), fva[picked].numpy(), 8)
    found = items_at(train_set, nbrs.flatten())
    neighbours = torch.stack([torch.stack([found[int(j)] for j in row]) for row in nbrs])
    neighbours_picture(torch.stack([queries[i] for i in picked]), yva[picked], neighbours, ytr.numpy()[nbrs], sims,
                       train_set.classes, path, caption)
    return path


def _picture_caption(weights, pretrained: dict) -> str:
    k, r = next(iter(pretrained.items()))
    return (f"{weights.parent.resolve().name} · k-NN probe: top-1 {r['top1']:.1f}% (k={k}) · val queries and their 8 "
            "nearest train images; under each: class · cosine similarity (green: the query's class, red: another)")


def format_table(report: dict) -> str:
    first = next(iter(next(iter(report["results"].values())).values()))
    top_n = f"top-{first.get('top_n', 5)}"  # top-min(5, classes): top-3 when there are 3 classes
    rows = [f"k-NN ({report['num_train']} train / {report['num_val']} val, pool={report['pool']}, "
            f"T={report['temperature']})", f"{'features':<14}{'k':>6}{'top-1':>9}{top_n:>9}"]
    for name, by_k in report["results"].items():
        for k, r in by_k.items():
            rows.append(f"{name:<14}{k:>6}{r['top1']:>9.2f}{r['top5']:>9.2f}")
    retrieval = report.get("retrieval", {})
    if retrieval:
        metrics = [m for m in next(iter(retrieval.values())) if m != "depth"]
        rows += ["", "retrieval of same-class train images (val queries)",
                 f"{'features':<14}" + "".join(f"{m:>10}" for m in metrics)]
        for name, r in retrieval.items():
            rows.append(f"{name:<14}" + "".join(f"{r[m]:>10.2f}" for m in metrics))
    if "picture" in report:
        rows.append(f"\nnearest neighbours: {report['picture']}")
    return "\n".join(rows)

