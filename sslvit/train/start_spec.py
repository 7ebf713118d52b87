"""``start``: another objective's run that a run trains first and starts from, written
``OBJECTIVE[:EPOCHS]``: ``mae:33`` is MAE's recipe for the run's data for 33 epochs, ``mae`` that
recipe's own epochs, ``none`` random weights. The syntax lives here, below the recipes, because the
data recipe scales a start's epochs with the run's; ``sslvit.recipes.start_run`` knows which
objectives can be a start and how one is trained."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

_SPEC = re.compile(r"([a-z_]+)(?::(\d+))?")


def parse_start(spec: Optional[str]) -> Optional[tuple[str, Optional[int]]]:
    """'mae:33' -> ('mae', 33); 'mae' -> ('mae', None); None or 'none' -> None."""
    if spec is None or spec.strip().lower() == "none":
        return None
    m = _SPEC.fullmatch(spec.strip())
    if m is None or (m[2] is not None and int(m[2]) < 1):
        weights = "/" in spec or Path(spec).expanduser().exists()  # a run or a file: what --init takes
        raise ValueError(f"start '{spec}' is not OBJECTIVE or OBJECTIVE:EPOCHS; write e.g. mae:33 (MAE's recipe for "
                         "this data, 33 epochs), mae, or none (random weights)"
                         + (f"; to start from the weights at '{spec}', pass --init with it." if weights else "."))
    return m[1], int(m[2]) if m[2] is not None else None


def scaled_start(spec: Optional[str], factor: float) -> Optional[str]:
    """The start with its epochs times ``factor`` (a folder's small-data recipe scales every run's
    epochs by its image count); a start without epochs takes its own recipe's, scaled there."""
    parsed = parse_start(spec)
    if parsed is None or parsed[1] is None:
        return spec
    return f"{parsed[0]}:{max(1, int(round(parsed[1] * factor)))}"
