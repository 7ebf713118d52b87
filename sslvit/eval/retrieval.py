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


def neighbours_picture(queries, query_labels, neighbours, neighbour_labels, sims, classes, path,
                       caption: str = "") -> None:
    """One row per query: the query, then its nearest train images, each with its class and
    cosine similarity under it (green: the query's class, red: another). queries (Q, 3, H, W)
    and neighbours (Q, n, 3, H, W) are normalised tensors, sims (Q, n); written atomically as PNG."""
    from sslvit.files import save_figure_atomic
    from sslvit.pictures import DPI, tile_figure, to_rgb

    n = neighbours.shape[1]
    names = list(classes) if classes else None

    def name(label) -> str:
        label = int(label)
        return names[label] if names and 0 <= label < len(names) else str(label)

    columns = {"query (val)": to_rgb(queries)}
    for j in range(n):
        columns[f"neighbour {j + 1}"] = to_rgb(neighbours[:, j])
    notes = [[(f"class {name(query_labels[i])}", "black")]
             + [(f"{name(neighbour_labels[i][j])} · {float(sims[i][j]):.3f}",
                 "green" if int(neighbour_labels[i][j]) == int(query_labels[i]) else "red") for j in range(n)]
             for i in range(len(queries))]
    save_figure_atomic(tile_figure(columns, caption, notes=notes), Path(path), DPI)
