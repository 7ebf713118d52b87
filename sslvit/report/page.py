"""``RUN/report.html``: one self-contained page per run (pictures embedded as PNG data URIs,
no script, nothing fetched), built from the files the run and its probes left. Sections, each
a ``<section id=...>``: summary, machine, warnings, probes, curves, pictures, config."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

from sslvit.report.runlog import latest_pictures, read_log, run_caption
from sslvit.report.tables import finetune_table, knn_tables, linear_table
from sslvit.report.alerts import run_warnings

SECTIONS = ("summary", "machine", "warnings", "probes", "curves", "pictures", "config")
STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0 1em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.baseline td{color:#666}
figure{margin:.5em 0 1.2em}.row{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
table.kv td{text-align:left}figcaption{font-size:.9em;color:#555}img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}.warn{color:#a40}.none{color:#777}"""


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    return (f'<figure><img src="{png_data_uri(path)}" alt="{html.escape(path.name)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _none(text: str) -> str:
    return f'<p class="none">{html.escape(text)}</p>'


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summary_section(run_dir: Path, records: list[dict]) -> str:
    """The caption line, the objective and backbone, the headline probe numbers."""
    import yaml

    config = run_dir / "config.yaml"
    cfg = (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}
    objective = next((r["objective"] for r in records if "objective" in r), "not logged")
    model = cfg.get("model") or {}
    lines = [run_caption(run_dir, records),
             f"objective: {objective} · data: {cfg.get('data', '?')} · backbone: ViT-"
             f"{model.get('size', '?')}, patch {model.get('patch_size', '?')}, {model.get('img_size', '?')} px",
             f"run directory: {run_dir.resolve()}"]
    knn = _read_json(run_dir / "knn.json")
    if knn and knn.get("results", {}).get("pretrained"):
        k, r = next(iter(knn["results"]["pretrained"].items()))
        others = [f"{n.replace('_', ' ')} {by_k[k]['top1']:.1f}%" for n, by_k in knn["results"].items()
                  if n != "pretrained" and k in by_k]
        lines.append(f"k-NN probe top-1 (k={k}): {r['top1']:.1f}%"
                     + (f"; baselines: {', '.join(others)}" if others else ""))
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def machine_section(records: list[dict]) -> str:
    """The device, processes and precision the run logged in its first record."""
    first = next((r for r in records if "precision" in r), None)
    if first is None:
        return _none("The run has not logged its set-up yet.")
    m = first.get("machine", {})
    rows = [["device", m.get("device_name", m.get("device", "not logged"))],
            ["processes", m.get("processes", "not logged")],
            ["precision", f"{first['precision']} ({first.get('precision_reason', '')})"]]
    rows += [[k, m[k]] for k in ("torch", "python", "platform") if k in m]
    return "<table class=\"kv\"><tbody>" + "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</tbody></table>"


def probes_section(run_dir: Path) -> str:
    parts = []
    knn = _read_json(run_dir / "knn.json")
    parts.append(knn_tables(knn) if knn else _none(f"No k-NN probe yet: python probes/knn.py --ckpt {run_dir}"))
    linear = _read_json(run_dir / "linear.json")
    parts.append(linear_table(linear) if linear
                 else _none(f"No linear probe yet: python probes/linear.py --ckpt {run_dir}"))
    tunes = [r for r in (_read_json(p) for p in sorted(run_dir.glob("finetune_*/finetune.json"))) if r]
    parts.append(finetune_table(tunes) if tunes
                 else _none(f"No fine-tuning yet: accelerate launch probes/finetune.py --ckpt {run_dir}"))
    return "\n".join(parts)


def pictures_section(run_dir: Path) -> str:
    pictures = latest_pictures(run_dir)
    if not pictures:
        return _none("No pictures yet (a run draws them every train.picture_every epochs and at its end).")
    return '<div class="row">' + "\n".join(_figure(p, p.name) for p in pictures) + "</div>"


def build_page(run_dir: Path) -> str:
    """The report's HTML for ``run_dir`` (nothing written)."""
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    config = run_dir / "config.yaml"
    curves = run_dir / "curves.png"
    body = {
        "summary": summary_section(run_dir, records),
        "machine": machine_section(records),
        "curves": _figure(curves, "loss, learning rate, the objective's health and the online k-NN, from log.jsonl")
                  if curves.is_file() else _none("No curves yet (log.jsonl has no step)."),
        "pictures": pictures_section(run_dir),
        "probes": probes_section(run_dir),
        "warnings": run_warnings(run_dir, records),
        "config": "<details><summary>resolved config (config.yaml)</summary><pre>"
                  f"{html.escape(config.read_text()) if config.is_file() else 'no config.yaml'}</pre></details>",
    }
    sections = "\n".join(f'<section id="{name}"><h2>{name.capitalize()}</h2>\n{body[name]}\n</section>'
                         for name in SECTIONS)
    title = html.escape(f"sslvit run {run_dir.resolve().name}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1>\n{sections}\n</body></html>\n")
