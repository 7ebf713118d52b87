import numpy as np
import pytest
import torch  # noqa: F401  (torch before faiss)

from sslvit.eval.knn import knn_classify


def brute_force_knn(train, train_y, query, query_y, k, T=0.07):
    """DINO's weighted k-NN written directly: cosine similarity to every train sample, top-k,
    votes exp(sim/T) per class."""
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    sim = qn @ tn.T
    C = int(max(train_y.max(), query_y.max())) + 1
    k = min(k, len(train))
    top1 = top5 = 0
    for i in range(len(query)):
        nn_idx = np.argsort(-sim[i], kind="stable")[:k]
        scores = np.zeros(C)
        for j in nn_idx:
            scores[train_y[j]] += np.exp(sim[i, j] / T)
        order = np.argsort(-scores, kind="stable")
        top1 += order[0] == query_y[i]
        top5 += query_y[i] in order[: min(5, C)]
    return 100 * top1 / len(query), 100 * top5 / len(query)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_faiss_knn_equals_brute_force(num_classes):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(num_classes, 16))
    ytr = rng.integers(0, num_classes, 300)
    yq = rng.integers(0, num_classes, 57)
    train = centers[ytr] + rng.normal(size=(300, 16)) * 1.5
    query = centers[yq] + rng.normal(size=(57, 16)) * 1.5
    got = knn_classify(train, ytr, query, yq, ks=(10, 20, 100, 200))
    assert sorted(got) == [10, 20, 100, 200]
    for k, r in got.items():
        t1, t5 = brute_force_knn(train, ytr, query, yq, k)
        assert r["top1"] == pytest.approx(t1) and r["top5"] == pytest.approx(t5)
    assert 0 < got[20]["top1"] < 100


def test_fewer_queries_than_k_and_k_capped_at_train_size():
    rng = np.random.default_rng(1)
    train, ytr = rng.normal(size=(30, 8)), rng.integers(0, 3, 30)
    query, yq = rng.normal(size=(2, 8)), rng.integers(0, 3, 2)
    got = knn_classify(train, ytr, query, yq, ks=(10, 20, 100, 200))
    assert sorted(got) == [10, 20, 30]  # 100 and 200 capped to the 30 train samples
    for k, r in got.items():
        t1, t5 = brute_force_knn(train, ytr, query, yq, k)
        assert r["top1"] == pytest.approx(t1) and r["top5"] == pytest.approx(t5) == 100.0  # top-5 of 3 classes


def brute_force_retrieval(train, train_y, query, query_y, ks=(1, 5, 10)):
    """recall@k and mAP from the definitions: sort the whole database by cosine similarity per
    query; AP = mean over relevant items of (relevant items up to it) / (its rank)."""
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    recalls = {k: 0.0 for k in ks}
    aps = []
    for i in range(len(query)):
        order = np.argsort(-(qn[i] @ tn.T), kind="stable")
        rel = train_y[order] == query_y[i]
        for k in ks:
            recalls[k] += rel[:k].any()
        ranks = np.flatnonzero(rel) + 1
        aps.append(np.mean([(j + 1) / r for j, r in enumerate(ranks)]) if len(ranks) else 0.0)
    return {f"recall@{k}": 100 * v / len(query) for k, v in recalls.items()}, 100 * np.mean(aps)


def test_retrieval_metrics_equal_brute_force():
    from sslvit.eval.retrieval import retrieval_metrics

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(5, 16))
    train_y, query_y = rng.integers(0, 5, 300), rng.integers(0, 6, 40)  # class 5: no relevant image
    train = centers[train_y] + rng.normal(size=(300, 16)) * 1.5
    query = np.concatenate([centers, rng.normal(size=(1, 16))])[query_y] + rng.normal(size=(40, 16)) * 1.5
    got = retrieval_metrics(train.astype(np.float32), train_y, query.astype(np.float32), query_y)
    recalls, m_ap = brute_force_retrieval(train, train_y, query, query_y)
    for k, v in recalls.items():
        assert got[k] == pytest.approx(v, abs=1e-9)
    assert got["mAP"] == pytest.approx(m_ap, abs=1e-4) and got["depth"] == 300
    assert 0 < got["mAP"] < 100 and got["recall@1"] < got["recall@10"]


def test_the_probe_takes_the_index_kind_and_refuses_an_unknown_one(tmp_path):
    from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe

    with pytest.raises(ValueError, match="index 'hnsw' is unknown; use auto, flat or ivf"):
        run_knn_probe(KNNProbeConfig(ckpt=str(tmp_path), index="hnsw"))
    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(3000, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    labels, qlabels = rng.integers(0, 4, 3000), rng.integers(0, 4, 50)
    exact = knn_classify(train, labels, query, qlabels, ks=(10,), index_kind="flat")
    assert knn_classify(train, labels, query, qlabels, ks=(10,)) == exact  # auto is exact at this size
    ivf = knn_classify(train, labels, query, qlabels, ks=(10,), index_kind="ivf")
    assert abs(ivf[10]["top1"] - exact[10]["top1"]) <= 10


@pytest.mark.parametrize("num_classes, column", [(3, "top-3"), (10, "top-5")])
def test_table_names_the_top_n_column_by_the_n_it_uses(num_classes, column):
    from sslvit.eval.knn_probe import format_table

    rng = np.random.default_rng(4)
    ytr, yq = np.arange(60) % num_classes, np.arange(20) % num_classes
    train, query = rng.normal(size=(60, 8)), rng.normal(size=(20, 8))
    results = knn_classify(train, ytr, query, yq, ks=(10,))
    assert results[10]["top_n"] == min(5, num_classes)
    report = {"num_train": 60, "num_val": 20, "pool": "cls", "temperature": 0.07, "results": {"pretrained": results}}
    header = format_table(report).splitlines()[1].split()
    assert header == ["features", "k", "top-1", column]
