"""The probe tables of a run's report, from the JSON files the probes write (``knn.json``,
``linear.json``, ``finetune_<mode>/finetune.json``), baselines beside the pretrained backbone.
Metric columns are named from the files' own keys, so a probe's new or renamed metric shows."""
from __future__ import annotations

import html
import re

BASELINES = {"random_init": "random init (baseline)", "raw_pixels": "raw pixels (baseline)"}


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"
    return html.escape(str(v))


def table(headers: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(f'<tr class="{c}">' + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metric_name(key: str) -> str:
    """'top1' -> 'top-1', 'recall@5' as it is."""
    return re.sub(r"^top(\w+)$", r"top-\1", key).replace("_", " ")


def _heading(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def knn_tables(report: dict) -> str:
    """k-NN classification: one row per k, the pretrained backbone's metrics next to each
    baseline's; then retrieval, one row per features."""
    results = report.get("results", {})
    metrics = list(dict.fromkeys(m for by_k in results.values() for r in by_k.values() for m in r))
    ks = list(dict.fromkeys(k for by_k in results.values() for k in by_k))
    headers = ["k", *[f"{n.replace('_', ' ')} {metric_name(m)}" for n in results for m in metrics]]
    rows = [[k, *[results[n].get(k, {}).get(m, "") for n in results for m in metrics]] for k in ks]
    out = [_heading(f"k-NN ({report.get('num_train')} train / {report.get('num_val')} val, "
                    f"pool {report.get('pool')}, T {report.get('temperature')}), %"), table(headers, rows),
           "<p>Baselines: raw pixels, and a random-init backbone of the same shape.</p>"]
    retrieval = report.get("retrieval", {})
    if retrieval:
        names = list(dict.fromkeys(m for r in retrieval.values() for m in r if m != "depth"))
        out += [_heading("retrieval of same-class train images (val queries), %"),
                table(["features", *names], [[BASELINES.get(n, n), *[r.get(m, "") for m in names]]
                                             for n, r in retrieval.items()],
                      ["baseline" if n in BASELINES else "" for n in retrieval])]
    return "\n".join(out)


def linear_table(report: dict) -> str:
    """The linear probe's grid of learning rates and weight decays, the held-out pick marked."""
    grid = report.get("grid", [])
    keys = [k for k in (grid[0] if grid else {}) if k != "lr_scaled"]
    rows = [[*[r.get(k, "") for k in keys], "best on held-out" if i == report.get("best_index") else ""]
            for i, r in enumerate(grid)]
    out = [_heading(f"linear probe ({report.get('recipe')} features, {report.get('head')} head, "
                    f"{report.get('epochs')} epochs; {report.get('num_train')} train / "
                    f"{report.get('num_holdout')} held out / {report.get('num_val')} val), %"),
           table([*map(metric_name, keys), ""], rows)]
    baselines = report.get("baselines", {})
    if baselines and grid:  # --baselines true: each one's best head beside the backbone's
        picked = {"pretrained": grid[report.get("best_index", 0)], **baselines}
        cols = [k for k in ("val_top1", "val_top5", "lr") if k in picked["pretrained"]]
        out += [_heading("the same heads and grid on other features (each head picked on held-out), %"),
                table(["features", *map(metric_name, cols)],
                      [[BASELINES.get(n, n), *[r.get(k, "") for k in cols]] for n, r in picked.items()],
                      ["baseline" if n in BASELINES else "" for n in picked])]
    return "\n".join(out)


def finetune_table(reports: list[dict]) -> str:
    keys = ("mode", "epochs", "img_size", "val_top1", "val_top5", "trainable_params", "total_params", "step_time_s")
    rows = [[r.get(k, "") for k in keys] for r in reports]
    return "\n".join([_heading("fine-tuning, %"), table([metric_name(k) for k in keys], rows)])
