"""Weighted k-NN search on CPU: sslvit's faiss path vs DINO's chunked torch matmul + top-k, then an
approximate faiss index (IVF) against exact search on a large database.

Data: synthetic clustered features, seeded. ``CLASSES`` class centres in ``--dim`` dimensions, each
sample = its class centre + Gaussian noise; centres and noise both scaled per dimension by
(i + 1)^-1/2 (a decaying spectrum, like real features' PCA spectrum), float32. Queries come from the
same distribution, with their labels. Prediction = DINO's weighted vote: the k nearest (cosine)
database vectors each vote for their class with exp(sim / 0.07).

Part 1, exact, ``--db`` x ``--dim`` database, ``--queries`` queries, k = ``--k``:
  faiss  sslvit's ``knn_search(index_kind="flat")`` (l2-normalise, IndexFlatIP, one batched search)
         + ``knn_vote`` -> argmax.
  torch  DINO's eval_knn.py ``knn_classifier`` written out: l2-normalise, then per chunk of queries
         sim = q @ db^T, topk(k), one-hot labels weighted by exp(sim / T), summed -> argmax; DINO's
         chunk of 100 queries and a chunk of 1000.
  Timed round-robin (1 warm-up round, ``--reps`` timed, median), each end to end from raw features
  to predictions. Reported: differing predictions (float rounding can flip near-ties; counted, not
  hidden), differing neighbour lists, speed ratio faiss / torch, and achieved FLOP/s = 2 Q N D / time
  as a fraction of the measured fp32 matmul peak (``flops.matmul_peak``, best of the start and
  one measurement per round: exact search is matmul-bound, so the peak is its limit).
Part 2, ``--big-db`` database (skipped with ``--skip-big``): exact IndexFlatIP vs the index of
  ``build_index(kind="auto")``, IVF-Flat at this size (nlist, nprobe chosen by sslvit; override with
  ``--index`` / ``--nlist`` / ``--nprobe``), searched with plain ``index.search`` and with sslvit's
  ``index_search`` (faiss's big-batch search: one BLAS product per inverted list). Build time (IVF:
  k-means training + add + nprobe tuning) is reported apart from search time; searches are timed
  round-robin (no warm-up, ``--big-reps`` timed, median). Reported: speed ratios, k-NN top-1,
  recall@k of the approximate neighbour lists against exact's.

Goals: faiss == torch predictions and >= 1.3x faster; IVF >= 10x faster than exact with top-1
within 0.2 point. Run from the repo root (CPU only; ~12 min at the defaults on 2 cores):

    .venv/bin/python benchmarks/knn.py [--db 100000 --queries 10000 --dim 384 --k 20 \
        --big-db 1000000 --threads 2 --skip-big]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch  # before faiss: faiss imported first can hang forked workers
import torch.nn.functional as F

import faiss
import numpy as np

from flops import matmul_peak, print_machine, time_round_robin  # benchmarks/flops.py
from sslvit.eval.knn import TEMPERATURE, _l2n, build_index, index_search, knn_search, knn_vote

CLASSES = 1000


def make_centres(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = ((np.arange(dim) + 1.0) ** -0.5).astype(np.float32)
    return rng.standard_normal((CLASSES, dim), dtype=np.float32) * scale, scale


def sample(centres: np.ndarray, scale: np.ndarray, n: int, noise: float, seed: int):
    """n samples (float32, (n, D)) and their labels (int64)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(centres), n)
    x = np.empty((n, centres.shape[1]), dtype=np.float32)
    for s in range(0, n, 100_000):  # in chunks: no float64 / full-size temporaries
        e = min(n, s + 100_000)
        x[s:e] = rng.standard_normal((e - s, centres.shape[1]), dtype=np.float32) * (noise * scale)
        x[s:e] += centres[y[s:e]]
    return x, y


def faiss_knn(db, ydb, q, k):
    sims, nbrs = knn_search(db, q, k, index_kind="flat")
    return knn_vote(sims, nbrs, ydb, CLASSES, k).argmax(1), nbrs


def torch_knn(db, ydb, q, k, chunk):
    """DINO eval_knn.py knn_classifier: train features transposed, chunks of queries, one-hot vote."""
    train_features = F.normalize(torch.from_numpy(db), dim=1, p=2).t()
    features_all = F.normalize(torch.from_numpy(q), dim=1, p=2)
    train_labels = torch.from_numpy(ydb)
    one_hot = torch.zeros(chunk * k, CLASSES)
    preds, nbrs = [], []
    for s in range(0, len(features_all), chunk):
        features = features_all[s:s + chunk]
        b = features.shape[0]
        similarity = torch.mm(features, train_features)
        distances, indices = similarity.topk(k, largest=True, sorted=True)
        retrieved = torch.gather(train_labels.view(1, -1).expand(b, -1), 1, indices)
        one_hot.resize_(b * k, CLASSES).zero_()
        one_hot.scatter_(1, retrieved.view(-1, 1), 1)
        weights = distances.clone().div_(TEMPERATURE).exp_()
        probs = torch.sum(one_hot.view(b, -1, CLASSES) * weights.view(b, -1, 1), 1)
        preds.append(probs.argmax(1))
        nbrs.append(indices)
    return torch.cat(preds).numpy(), torch.cat(nbrs).numpy()


def same_lists(a: np.ndarray, b: np.ndarray) -> int:
    """Queries whose k neighbours are the same set (order may differ on equal similarities)."""
    return int((np.sort(a, 1) == np.sort(b, 1)).all(1).sum())


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, e)) / len(e) for a, e in zip(approx, exact)]))


def with_peak(steps: dict, peaks: list) -> dict:
    """``steps`` plus a matmul-peak measurement in every round (appended to ``peaks``): on a
    shared machine the peak measured once, at the start, can be far from the rounds' conditions."""
    def measure():
        peaks.append(matmul_peak(torch.float32, reps=3))
    return {**steps, "_peak": measure}


def exact_part(args, centres, scale, peak) -> None:
    db, ydb = sample(centres, scale, args.db, args.noise, 1)
    q, yq = sample(centres, scale, args.queries, args.noise, 2)
    k, Q, N, D = args.k, args.queries, args.db, args.dim
    print(f"\n== exact: database {N:,} x {D}, {Q:,} queries, k = {k}, {CLASSES} classes ==")
    out = {}
    runs = {"faiss (sslvit)": lambda: faiss_knn(db, ydb, q, k)}
    for chunk in args.chunks:
        runs[f"torch chunk {chunk}"] = lambda c=chunk: torch_knn(db, ydb, q, k, c)
    steps = {name: (lambda name=name, f=f: out.__setitem__(name, f())) for name, f in runs.items()}
    times = time_round_robin(with_peak(steps, peaks := [peak]), args.reps, 1)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    peak = max(peaks)
    print(f"fp32 matmul peak, best of the start and the rounds: {peak / 1e9:.1f} GFLOP/s")
    ref_pred, ref_nbrs = out["faiss (sslvit)"]
    for name in runs:
        pred, nbrs = out[name]
        fps = 2 * Q * N * D / med[name]
        print(f"{name:15s} median {med[name]:6.2f} s  {fps / 1e9:6.1f} GFLOP/s = {fps / peak:4.0%} of peak  "
              f"top-1 {(pred == yq).mean() * 100:.2f}  [{' '.join(f'{t:.2f}' for t in times[name])}]")
    for name in runs:
        if name.startswith("torch"):
            pred, nbrs = out[name]
            print(f"faiss vs {name}: {int((pred != ref_pred).sum())} of {Q:,} predictions differ, "
                  f"{Q - same_lists(nbrs, ref_nbrs)} neighbour lists differ; faiss "
                  f"{med[name] / med['faiss (sslvit)']:.2f}x faster (goal >= 1.3x)")


def big_part(args, centres, scale, peak) -> None:
    db, ydb = sample(centres, scale, args.big_db, args.noise, 3)
    q, yq = sample(centres, scale, args.big_queries, args.noise, 4)
    k, Q, N, D = args.k, args.big_queries, args.big_db, args.dim
    print(f"\n== approximate: database {N:,} x {D}, {Q:,} queries, k = {k} ==")
    db, q = _l2n(db), _l2n(q)  # both indexes on the same normalised vectors
    t = time.perf_counter()
    flat = build_index(db, "flat")
    t_flat = time.perf_counter() - t
    t = time.perf_counter()
    ivf = build_index(db, args.index, args.nlist, args.nprobe, k)
    t_ivf = time.perf_counter() - t
    kind = type(ivf).__name__
    params = f"nlist {ivf.nlist}, nprobe {ivf.nprobe}" if hasattr(ivf, "nlist") else ""
    print(f"build: IndexFlatIP {t_flat:.1f} s; {kind} ({params}) {t_ivf:.1f} s "
          "(k-means training + add + nprobe tuning; not in the search times)")
    runs = {"exact flat": lambda: flat.search(q, k), "approx search": lambda: ivf.search(q, k),
            "approx sslvit": lambda: index_search(ivf, q, k)}
    out = {}
    steps = {name: (lambda name=name, f=f: out.__setitem__(name, f())) for name, f in runs.items()}
    times = time_round_robin(with_peak(steps, peaks := [peak]), args.big_reps, 0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    peak = max(peaks)
    top1 = {}
    for name, (sims, nbrs) in out.items():
        pred = knn_vote(sims, np.maximum(nbrs, 0), ydb, CLASSES, k).argmax(1)
        top1[name] = (pred == yq).mean() * 100
        print(f"{name:13s} median {med[name]:7.2f} s  {Q / med[name]:7.0f} queries/s  k-NN top-1 {top1[name]:.2f}  "
              f"recall@{k} {recall(nbrs, out['exact flat'][1]) * 100:6.2f}%  "
              f"[{' '.join(f'{t:.2f}' for t in times[name])}]")
    fps = 2 * Q * N * D / med["exact flat"]
    print(f"exact flat: {fps / 1e9:.1f} GFLOP/s = {fps / peak:.0%} of peak")
    for name in ("approx search", "approx sslvit"):
        print(f"{name}: {med['exact flat'] / med[name]:.1f}x faster than exact (goal >= 10x), top-1 "
              f"{top1[name] - top1['exact flat']:+.2f} points vs exact (goal within 0.2), "
              f"{int((out[name][1] < 0).any(1).sum())} queries short of {k} neighbours")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--chunks", type=int, nargs="+", default=[100, 1000], help="torch query chunks")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-db", type=int, default=1_000_000)
    ap.add_argument("--big-queries", type=int, default=10_000)
    ap.add_argument("--big-reps", type=int, default=2)
    ap.add_argument("--index", default="auto", choices=("auto", "flat", "ivf"), help="approximate index kind")
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--noise", type=float, default=1.6, help="noise scale relative to the centres'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print_machine(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    peak = matmul_peak(torch.float32)
    print(f"fp32 matmul peak 2048^3 (torch, best of 10): {peak / 1e9:.1f} GFLOP/s")
    centres, scale = make_centres(args.dim, 0)
    exact_part(args, centres, scale, peak)
    if not args.skip_big:
        big_part(args, centres, scale, peak)
    print(f"fp32 matmul peak 2048^3 (torch) after the runs: {matmul_peak(torch.float32) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
