"""A run's report: ``RUN/report.html`` (``page``) and ``RUN/curves.png`` (``curves``), built
from the files in the run directory alone, so ``python -m sslvit.report RUN`` rebuilds it
anywhere. Written at the end of every pretraining run and refreshed by every probe."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sslvit.files import atomic_path

REPORT = "report.html"


def build_report(run_dir: Path) -> Path:
    """Redraw ``curves.png`` from ``log.jsonl`` (when there is one) and write ``report.html``
    atomically; -> its path."""
    from sslvit.report.curves import save_curves
    from sslvit.report.page import build_page

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"'{run_dir}' is not a directory; pass the run directory (the pretraining --out).")
    if (run_dir / "log.jsonl").is_file():
        save_curves(run_dir)
    path = run_dir / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(build_page(run_dir), encoding="utf-8")
    return path


def refresh_report(run_dir: Path) -> Optional[Path]:
    """After a probe: rebuild the report of ``run_dir`` when it is a run's directory (it has a
    ``config.yaml`` or a report), else nothing (a bare exported backbone)."""
    run_dir = Path(run_dir)
    if not ((run_dir / "config.yaml").is_file() or (run_dir / REPORT).is_file()):
        return None
    return build_report(run_dir)
