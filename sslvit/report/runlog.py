"""What a run directory holds, read back for its curves and its report: ``log.jsonl`` records
(written by ``sslvit.train.loop``), the latest pictures, the probes' JSON files."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

HEALTH_KEYS = ("teacher_entropy", "kl", "mlm_acc")  # an objective's health: DINO / iBOT, BEiT


def read_log(run_dir: Path) -> list[dict]:
    """The records of ``RUN/log.jsonl`` in order; a line cut short by a kill is left out."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def series(records: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of the records holding a finite number under ``key``."""
    pairs = [(r[x], r[key]) for r in records if isinstance(r.get(key), (int, float)) and x in r
             and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def health_keys(records: list[dict]) -> list[str]:
    """Logged health keys, a composite's own prefixed ones too (``dino.teacher_entropy``)."""
    found = {k for r in records for k in r if k.split(".")[-1] in HEALTH_KEYS}
    return sorted(found, key=lambda k: (HEALTH_KEYS.index(k.split(".")[-1]), k))


def last_value(records: list[dict], key: str) -> Optional[float]:
    """The newest finite number logged under ``key``, or None."""
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return values[-1] if values else None


def epochs_planned(run_dir: Path) -> Optional[int]:
    """train.epochs from the run's config.yaml, or None."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    cfg = yaml.safe_load(path.read_text()) or {}
    return (cfg.get("train") or {}).get("epochs")


def run_caption(run_dir: Path, records: list[dict], what: str = "") -> str:
    """'RUN · epoch E/N · loss L · online k-NN top-1 K · WHAT': the line above every picture."""
    run_dir = Path(run_dir)
    done = [r for r in records if "epoch_loss" in r]
    parts = [run_dir.resolve().name]
    if done:
        planned = epochs_planned(run_dir)
        parts.append(f"epoch {done[-1]['epoch']}" + (f"/{planned}" if planned else ""))
        parts.append(f"loss {done[-1]['epoch_loss']:.4f}")
    knn = last_value(records, "knn_top1")
    if knn is not None:
        parts.append(f"online k-NN top-1 {knn:.1f}%")
    if what:
        parts.append(what)
    return " · ".join(parts)


def latest_pictures(run_dir: Path) -> list[Path]:
    """The newest ``pictures_epochNNNN.png``, then the probes' pictures that exist."""
    run_dir = Path(run_dir)
    grids = sorted(run_dir.glob("pictures_epoch*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    return grids[-1:] + [p for p in (run_dir / "attention.png", run_dir / "knn_neighbours.png") if p.is_file()]
