"""Weighted k-NN classification on l2-normalized features (DINO's ``eval_knn.py`` protocol),
with faiss doing the search (imported by the functions that search)."""
from __future__ import annotations

import contextlib
import io

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
IVF_MIN_SIZE = 200_000  # "auto" index: exact below this many train vectors, IVF from it
IVF_RECALL = 0.95  # "ivf" index: default nprobe reaches this recall@k against exact search
BIG_BATCH_MIN = 64  # IVF search: faiss big-batch search from this many queries per inverted list on average


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(train: np.ndarray, kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                k: int = 20, seed: int = 0) -> faiss.Index:
    """Inner-product index over ``train`` (rows l2-normalised: cosine similarity).

    kind "flat": exact (IndexFlatIP). "ivf": IndexIVFFlat, spherical k-means (10 iterations) into
    ``nlist`` (default 4 sqrt(N)) lists on a sample of 40 * nlist vectors; ``nprobe`` lists searched
    per query, by default the smallest power of two whose recall@k against exact search reaches
    ``IVF_RECALL`` on 256 train vectors used as queries (themselves excluded). "auto": flat below
    ``IVF_MIN_SIZE`` vectors, else ivf."""
    import faiss  # here, not at the top: a probe's --help needs no faiss (and torch comes first)

    n, d = train.shape
    if kind == "auto":
        kind = "flat" if n < IVF_MIN_SIZE else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(train)
        return index
    if kind != "ivf":
        raise ValueError(f"index kind {kind!r}: expected 'auto', 'flat' or 'ivf'")
    rng = np.random.default_rng(seed)
    nlist = nlist or max(1, min(int(round(4 * n ** 0.5)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical, index.cp.seed = True, seed
    sample = np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))
    index.train(train[sample])
    index.add(train)
    if nprobe is None:
        probe = np.sort(rng.choice(n, min(n, 256), replace=False))
        kk = min(k + 1, n)
        _, exact = faiss.knn(train[probe], train, kk, faiss.METRIC_INNER_PRODUCT)
        nprobe = 1
        while nprobe < nlist:
            index.nprobe = nprobe
            _, approx = index.search(train[probe], kk)
            hits = [len((set(a) & set(e)) - {i}) / max(1, len(set(e) - {i}))
                    for i, a, e in zip(probe, approx, exact)]
            if np.mean(hits) >= IVF_RECALL:
                break
            nprobe *= 2
    index.nprobe = min(nprobe, nlist)
    return index


def index_search(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``; for an IVF index with, on average, ``BIG_BATCH_MIN`` or more queries per
    inverted list, faiss's big-batch search instead (one BLAS product per list against all the
    queries probing it, instead of scanning the lists query by query). Queries left short of k
    results (their probed lists held fewer vectors) are searched again with every list probed."""
    import faiss  # here, not at the top: a probe's --help needs no faiss (and torch comes first)

    ivf = isinstance(index, faiss.IndexIVF)
    if ivf and len(query) * index.nprobe >= BIG_BATCH_MIN * index.nlist:
        from faiss.contrib.big_batch_search import big_batch_search
        with contextlib.redirect_stdout(io.StringIO()):  # faiss 1.15 prints progress per list at verbose=0
            sims, nbrs = big_batch_search(index, query, k, method="pairwise_distances", threaded=1)
    else:
        sims, nbrs = index.search(query, k)  # one large batched search (small batches are slow)
    short = (nbrs < 0).any(1)
    if ivf and short.any():
        nprobe, index.nprobe = index.nprobe, index.nlist
        sims[short], nbrs[short] = index.search(np.ascontiguousarray(query[short]), k)
        index.nprobe = nprobe
    return sims, nbrs


def knn_search(train: np.ndarray, query: np.ndarray, k: int, index_kind: str = "auto", nlist: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k: (Q, k) similarities (descending) and train indices. ``index_kind`` as in
    ``build_index``: "auto" is exact (IndexFlatIP) below ``IVF_MIN_SIZE`` train vectors."""
    train, query = _l2n(train), _l2n(query)
    k = min(k, train.shape[0])
    return index_search(build_index(train, index_kind, nlist, nprobe, k), query, k)


def knn_vote(sims: np.ndarray, nbrs: np.ndarray, train_labels: np.ndarray, num_classes: int, k: int,
             temperature: float = TEMPERATURE) -> np.ndarray:
    """Class scores (Q, C): each of the k nearest neighbours votes for its class with exp(sim / T)."""
    sims, nbrs = sims[:, :k], nbrs[:, :k]
    weights = np.exp(sims / temperature)
    scores = np.zeros((sims.shape[0], num_classes), dtype=np.float64)
    np.add.at(scores, (np.arange(sims.shape[0])[:, None], train_labels[nbrs]), weights)
    return scores


def knn_classify(train_feats, train_labels, query_feats, query_labels, ks=KS, temperature=TEMPERATURE,
                 index_kind: str = "auto") -> dict:
    """-> {k: {"top1": %, "top5": %, "top_n": n}} for each k (capped at the train size; duplicates
    dropped). Any number of classes and of queries; "top5" is top-n with n = min(5, C), so a
    table names its column by ``top_n`` (top-3 for 3 classes)."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    query_labels = np.asarray(query_labels, dtype=np.int64)
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    ks = sorted({min(k, len(train_labels)) for k in ks})
    sims, nbrs = knn_search(np.asarray(train_feats), np.asarray(query_feats), max(ks), index_kind)
    out = {}
    for k in ks:
        scores = knn_vote(sims, nbrs, train_labels, num_classes, k, temperature)
        order = np.argsort(-scores, axis=1, kind="stable")
        top1 = (order[:, 0] == query_labels).mean() * 100
        top_n = min(5, num_classes)
        top5 = (order[:, :top_n] == query_labels[:, None]).any(1).mean() * 100
        out[k] = {"top1": float(top1), "top5": float(top5), "top_n": top_n}
    return out
