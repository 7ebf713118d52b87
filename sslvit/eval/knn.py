"""Weighted k-NN classification on l2-normalized features (DINO's ``eval_knn.py`` protocol),
with faiss doing the search."""
from __future__ import annotations

import faiss
import numpy as np

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_search(train: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k: (Q, k) similarities (descending) and train indices. Exact (IndexFlatIP)."""
    train, query = _l2n(train), _l2n(query)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    return index.search(query, min(k, train.shape[0]))  # one large batched search (small batches are slow)


def knn_vote(sims: np.ndarray, nbrs: np.ndarray, train_labels: np.ndarray, num_classes: int, k: int,
             temperature: float = TEMPERATURE) -> np.ndarray:
    """Class scores (Q, C): each of the k nearest neighbours votes for its class with exp(sim / T)."""
    sims, nbrs = sims[:, :k], nbrs[:, :k]
    weights = np.exp(sims / temperature)
    scores = np.zeros((sims.shape[0], num_classes), dtype=np.float64)
    np.add.at(scores, (np.arange(sims.shape[0])[:, None], train_labels[nbrs]), weights)
    return scores


def knn_classify(train_feats, train_labels, query_feats, query_labels, ks=KS, temperature=TEMPERATURE) -> dict:
    """-> {k: {"top1": %, "top5": %}} for each k (capped at the train size; duplicates dropped).

    Any number of classes and of queries; top-5 is top-min(5, C)."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    query_labels = np.asarray(query_labels, dtype=np.int64)
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    ks = sorted({min(k, len(train_labels)) for k in ks})
    sims, nbrs = knn_search(np.asarray(train_feats), np.asarray(query_feats), max(ks))
    out = {}
    for k in ks:
        scores = knn_vote(sims, nbrs, train_labels, num_classes, k, temperature)
        order = np.argsort(-scores, axis=1, kind="stable")
        top1 = (order[:, 0] == query_labels).mean() * 100
        top5 = (order[:, : min(5, num_classes)] == query_labels[:, None]).any(1).mean() * 100
        out[k] = {"top1": float(top1), "top5": float(top5)}
    return out
