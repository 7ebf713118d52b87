"""What every ``probes/*.py`` script does around its probe: config, clear errors, output."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from sslvit.config import build_config
from sslvit.report import refresh_report
from sslvit.runtime.errors import USER_ERRORS


def main(config_cls, run, fmt) -> None:
    try:
        cfg = build_config(config_cls)
        report = run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if report is not None:  # None on the other processes of a multi-process probe
        print(fmt(report))
        if report.get("replaced"):
            print(f"(replaced the earlier {', '.join(report['replaced'])} of a previous probe run)")
        if "ckpt" in report and int(os.environ.get("RANK", "0")) == 0:
            refresh(Path(report["ckpt"]).parent)


def refresh(run_dir: Path) -> None:
    """The run's report.html with this probe's results; a report that fails is a warning only."""
    try:
        path = refresh_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the probe's results are written; its report must not hide them
        print(f"warning: {run_dir}/report.html could not be refreshed ({type(e).__name__}: {e}).", file=sys.stderr)
        return
    if path is not None:
        print(f"report: {path}")
