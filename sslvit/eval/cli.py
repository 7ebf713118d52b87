"""What every ``probes/*.py`` script does around its probe: config, clear errors, output."""
from __future__ import annotations

import sys

from sslvit.config import build_config
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
