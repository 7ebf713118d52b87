"""Retrieval of same-class images: val queries against the train database, cosine similarity
on l2-normalised features, ranked by faiss (``knn_search``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslvit.eval.knn import knn_search

RECALL_AT = (1, 5, 10)
FULL_RANKING_MAX = 100_000  # above this many database images, mAP is computed on the top 1,000


def retrieval_metrics(train_feats, train_labels, query_feats, query_labels, recall_at=RECALL_AT,
                      depth: int | None = None) -> dict:
    """-> {"recall@k": %, ..., "mAP" (or "mAP@D"): %, "depth": D}.

    recall@k: share of queries with at least one same-class image among their k nearest.
    AP of a query: the mean over its relevant images r of precision at r's rank, over the
    ranking of the whole database (``depth`` None and a database up to ``FULL_RANKING_MAX``)
    or of its top D, then normalised by min(relevant images, D)."""
    train_labels = np.asarray(train_labels)
    query_labels = np.asarray(query_labels)
    n = len(train_labels)
    if depth is None:
        depth = n if n <= FULL_RANKING_MAX else 1000
    depth = max(min(depth, n), max(recall_at))
    depth = min(depth, n)
    _, nbrs = knn_search(np.asarray(train_feats), np.asarray(query_feats), depth)
    relevant = train_labels[nbrs] == query_labels[:, None]  # (Q, D)
    out = {f"recall@{k}": float(relevant[:, :k].any(1).mean() * 100) for k in recall_at if k <= n}
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, depth + 1)
    n_rel = (train_labels[None, :] == query_labels[:, None]).sum(1)
    denom = np.maximum(np.minimum(n_rel, depth), 1)
    ap = (precision * relevant).sum(1) / denom
    out["mAP" if depth == n else f"mAP@{depth}"] = float(ap.mean() * 100)
    out["depth"] = int(depth)
    return out


def neighbours_picture(queries, query_labels, neighbours, neighbour_labels, classes, path) -> None:
    """One row per query: the query, then its nearest train images, each captioned with its class
    (green: same class as the query, red: another). queries (Q, 3, H, W) and neighbours
    (Q, n, 3, H, W) are normalised tensors; written atomically as PNG."""
    import torch
    from PIL import Image, ImageDraw

    from sslvit.data.transforms import denormalize
    from sslvit.files import atomic_path

    Q, n = neighbours.shape[:2]
    tiles = denormalize(torch.cat([queries[:, None], neighbours], 1).flatten(0, 1).float())
    scale = max(1, 64 // tiles.shape[-1])  # small images (digits) are enlarged to be legible
    tiles = torch.nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest")
    h, w = tiles.shape[-2:]
    cap, pad = 14, 4
    sheet = Image.new("RGB", ((n + 1) * (w + pad) + pad, Q * (h + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    arrays = (tiles.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    names = list(classes) if classes else None
    for i in range(Q):
        for j in range(n + 1):
            x, y = pad + j * (w + pad), pad + i * (h + cap + pad)
            sheet.paste(Image.fromarray(arrays[i * (n + 1) + j]), (x, y))
            label = int(query_labels[i]) if j == 0 else int(neighbour_labels[i][j - 1])
            text = names[label] if names and 0 <= label < len(names) else str(label)
            color = "black" if j == 0 else ("green" if label == int(query_labels[i]) else "red")
            draw.text((x, y + h), ("query: " if j == 0 else "") + text, fill=color)
    with atomic_path(Path(path)) as tmp:
        sheet.save(tmp, format="PNG")
