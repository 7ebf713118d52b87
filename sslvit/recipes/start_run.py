"""What a run's ``start`` trains first: another objective's run on the same data, seed and backbone
shape, in ``OUT/start-OBJECTIVE[EPOCHS]/``, whose backbone the run then loads as ``--init``.

DINO's and iBOT's small-data recipes name one (``start: mae:33``): on small data they learn from an
MAE start and stay near chance from random weights in their budget (docs/results.md, "DINO on an
MAE start"), so a user's one command gets both stages. ``--init`` (weights of your own) or
``--start none`` (random weights) skip it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sslvit.recipes.mae import MAERunConfig
from sslvit.train.start_spec import parse_start

STARTS = {"mae": (MAERunConfig, "mae", "MAE")}  # name -> (run config, preset file, the paper's name)
# the backbone's shape is the run's, so the start's weights load into every block; the rest of the
# start's model keys (drop path, dynamic size) are its own recipe's
SHAPE_KEYS = ("size", "patch_size", "img_size", "stem", "stem_norm", "pos_embed", "depth", "parallel",
              "init_values", "reg_tokens", "grad_checkpointing")
# how the data is read and the run is reproduced; the optimisation keys are the start's own recipe's
DATA_KEYS = ("seed", "precision", "hflip", "num_workers", "max_unreadable", "shuffle_buffer", "data_resampled")


@dataclass(frozen=True)
class StartRun:
    config_cls: type
    preset: str
    argv: list
    out: Path
    what: str  # "MAE's recipe for this data, 33 epochs"


def check_start(spec: Optional[str]) -> None:
    """ValueError in one sentence for a start that cannot be trained."""
    parsed = parse_start(spec)
    if parsed is not None and parsed[0] not in STARTS:
        raise ValueError(f"start '{spec}' names the objective '{parsed[0]}', which cannot start a run; use "
                         f"{', '.join(STARTS)} (e.g. mae:33) or none.")


def _text(value) -> str:
    """A config value as the command line writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def start_run(cfg) -> Optional[StartRun]:
    """The start ``cfg`` (a run config with ``start``, ``init``, ``data``, ``out``, ``model`` and
    ``train``) trains first, or None: no start, or ``--init`` given."""
    parsed = parse_start(cfg.start)
    if parsed is None or cfg.init:
        return None
    check_start(cfg.start)
    name, epochs = parsed
    config_cls, preset, paper = STARTS[name]
    out = Path(cfg.out).expanduser() / f"start-{name}{epochs or ''}"
    argv = ["--data", cfg.data, "--out", str(out)]
    argv += [f"--model.{k}={_text(getattr(cfg.model, k))}" for k in SHAPE_KEYS]
    argv += [f"--train.{k}={_text(getattr(cfg.train, k))}" for k in DATA_KEYS]
    argv += [f"--train.epochs={epochs}"] if epochs else []
    length = f"{epochs} epoch{'s' * (epochs != 1)}" if epochs else "its own epochs"
    what = f"{paper}'s recipe for this data, {length}"
    return StartRun(config_cls, preset, argv, out, what)
