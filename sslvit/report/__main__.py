"""``python -m sslvit.report RUN_DIR``: rebuild RUN_DIR/report.html (and curves.png) from what
the run and its probes wrote."""
from __future__ import annotations

import sys

from sslvit.files import WRITE_ERRORS, disk_full, reason
from sslvit.report import build_report


def main(argv: list[str]) -> None:
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        raise SystemExit(0)
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    try:
        path = build_report(argv[0])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except WRITE_ERRORS as e:
        print(f"error: Cannot write the report into '{argv[0]}' ({reason(e)}); "
              f"{'free some space there, or ' * disk_full(e)}copy the run to a disk you can write to.", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"-> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
