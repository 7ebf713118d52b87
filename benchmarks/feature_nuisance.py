"""What a backbone's features hold on the cluttered set besides the digit: for each val image, its
nearest train image under the features (cosine, as the k-NN probe) against a random train image,
compared by the two per-image nuisances of the generator: the background colour (mean of the
2-px border) and the digit's colour (mean of the 100 brightest pixels). A ratio well below 1
means the features sort images by that nuisance; raw pixels and a random-init backbone of the
first run's shape are the reference rows.

    python benchmarks/feature_nuisance.py RUN [RUN ...] [--data cluttered] [--pool cls]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from flops import print_machine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sslvit.data.dataset import build_dataset  # noqa: E402
from sslvit.data.transforms import eval_transform  # noqa: E402
from sslvit.eval.feature_cache import cached_features, feature_key  # noqa: E402
from sslvit.eval.features import extract_features, raw_pixel_features  # noqa: E402
from sslvit.eval.knn import knn_search  # noqa: E402

BORDER, BRIGHTEST = 2, 100


def nuisances(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W, 3) in 0..1 -> background colour (N, 3), digit colour (N, 3)."""
    n = len(images)
    border = np.concatenate([images[:, :BORDER].reshape(n, -1, 3), images[:, -BORDER:].reshape(n, -1, 3)], 1)
    flat = images.reshape(n, -1, 3)
    brightest = np.argsort(flat.sum(-1), axis=1)[:, -BRIGHTEST:]
    return border.mean(1), np.take_along_axis(flat, brightest[..., None], 1).mean(1)


def row(name: str, nn: np.ndarray, rnd: np.ndarray, tr: tuple, va: tuple, acc: float) -> str:
    cells = []
    for t, v in zip(tr, va):
        near, far = np.abs(v - t[nn]).sum(1).mean(), np.abs(v - t[rnd]).sum(1).mean()
        cells.append(f"{near:.3f} / {far:.3f} = {near / far:.2f}")
    return f"| {name} | {acc:.1f} | " + " | ".join(cells) + " |"


def main() -> None:
    from sslvit.models.export import load_backbone, resolve_backbone_path
    from sslvit.models.vit import build_backbone

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default="cluttered")
    p.add_argument("--pool", default="cls")
    args = p.parse_args()
    print_machine()
    weights = [resolve_backbone_path(r) for r in args.runs]
    size = load_backbone(weights[0])[1].img_size
    sets = {s: build_dataset(args.data, s, size, transform=eval_transform(size)) for s in ("train", "val")}
    if not all(isinstance(im, Image.Image) for im in sets["train"].items[:1]):
        raise SystemExit(f"'{args.data}' is read from files; this benchmark reads the embedded sets only.")
    pictures = {s: np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in d.items])
                for s, d in sets.items()}
    tr, va = nuisances(pictures["train"]), nuisances(pictures["val"])
    rnd = np.random.default_rng(0).integers(0, len(pictures["train"]), len(pictures["val"]))
    print(f"data {args.data}, pool {args.pool}: mean L1 distance to the nearest train image / to a random one")
    print("| features | k-NN top-1 (k = 1) | background colour | digit colour |\n|---|---|---|---|")

    def report(name, feats):
        (ftr, ytr), (fva, yva) = feats
        nn = knn_search(ftr.numpy(), fva.numpy(), 1)[1][:, 0]  # the k-NN probe's cosine search
        print(row(name, nn, rnd, tr, va, float((ytr.numpy()[nn] == yva.numpy()).mean() * 100)))

    report("raw pixels", [raw_pixel_features(sets[s]) for s in ("train", "val")])
    torch.manual_seed(0)
    random_init = build_backbone(load_backbone(weights[0])[1])
    report("random init", [extract_features(random_init, sets[s], pool=args.pool) for s in ("train", "val")])
    for w in weights:
        backbone, _ = load_backbone(w)
        report(w.parent.name, [cached_features(w, lambda s=s: extract_features(backbone, sets[s], pool=args.pool),
                                               **feature_key(args.pool, 4, args.data, s, size))[:2]
                               for s in ("train", "val")])


if __name__ == "__main__":
    main()
