"""Writes that are whole or absent: every output is written under a temporary name in its own
folder and renamed into place, so a kill or a full disk never leaves a half-written file under
the real name. Lowest layer: data, models, train, eval and tokenizers all use it."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the body succeeds,
    remove it when it fails."""
    path = Path(path)
    tmp = path.with_name(f".tmp_{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)


def write_json_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def save_figure_atomic(fig, path: Path, dpi: int) -> None:
    """A matplotlib ``Figure`` as a PNG at ``dpi`` (its size in inches x dpi = its pixels)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def existing(paths: Iterable[Path]) -> list[str]:
    """The names of ``paths`` that exist now: the earlier results a probe is about to replace."""
    return [Path(p).name for p in paths if Path(p).exists()]
