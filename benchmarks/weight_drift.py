"""How far a pretraining run moved its backbone from the weights it started from, part by part:
the run's initial weights are rebuilt from its config.yaml and ``train.seed`` exactly as the
run built them (the seed set, then the objective built), and each part of the exported
backbone (the stem, the position table, each block, the final norm) is compared with them:
relative change ||W - W0|| / ||W0|| over the part's matrices (tensors of 2 or more dims) and
the rms of W - W0. A run whose blocks moved a few percent still holds its random features,
whatever its loss did (the head can lower a loss on its own).

    python benchmarks/weight_drift.py RUN [RUN ...]

RUN is a run directory of pretrain/mae.py, dino.py, ibot.py or mae_dino.py. BEiT runs are
refused: rebuilding one fits its tokenizer again.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flops import print_machine  # noqa: E402

from sslvit.config import build_config, load_yaml  # noqa: E402
from sslvit.models.export import WEIGHTS  # noqa: E402


def recipe_of(config: dict, run: Path):
    """The run config class that wrote ``config`` (its objective's section names it)."""
    from sslvit.recipes.dino import DINORunConfig
    from sslvit.recipes.ibot import IBOTRunConfig
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.recipes.mae_dino import MAEDINORunConfig

    if "beit" in config or "tokenizer" in config:
        raise SystemExit(f"{run}: a BEiT run is not measured here (rebuilding it fits its tokenizer again); "
                         "pass an MAE, DINO, iBOT or MAE+DINO run.")
    if "ibot" in config:
        return IBOTRunConfig
    if "mae" in config:
        return MAEDINORunConfig if "dino" in config else MAERunConfig
    if "dino" in config:
        return DINORunConfig
    raise SystemExit(f"{run}/config.yaml names no objective this script knows (mae, dino, ibot); "
                     "pass a run directory written by pretrain/*.py.")


def initial_state(run: Path) -> dict[str, torch.Tensor]:
    """The exported backbone's state at the run's step 0, rebuilt as ``sslvit.train.entry`` builds it."""
    from accelerate.utils import set_seed

    file = run / "config.yaml"
    if not file.is_file():
        raise SystemExit(f"'{run}' holds no config.yaml; pass a run directory written by pretrain/*.py.")
    raw = load_yaml(file)
    if raw.get("init") not in (None, "null"):
        raise SystemExit(f"{run} started from --init {raw['init']}, not from seeded weights; compare it with "
                         "that file instead.")
    cfg = build_config(recipe_of(raw, run), [], base=raw)
    set_seed(cfg.train.seed)
    objective = cfg.build_objective()
    return {k: v.detach().clone() for k, v in objective.exported_backbone().state_dict().items()}


def part_of(name: str) -> str | None:
    """The part a parameter belongs to, or None for what is not a matrix of the stream."""
    block = re.match(r"blocks\.(\d+)\.", name)
    if block:
        return f"block {int(block.group(1)) + 1}"
    for part in ("patch_embed", "pos_embed", "cls_token", "reg_token", "norm."):
        if name.startswith(part):
            return {"patch_embed": "stem", "norm.": "final norm"}.get(part, part)
    return None


def drift(initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> list[tuple[str, float, float]]:
    """-> (part, ||W - W0|| / ||W0||, rms of W - W0) per part, in the backbone's order. Matrices
    only (>= 2 dims), except the final norm's gains and biases, which have no matrix."""
    sums: dict[str, list[float]] = {}  # part -> [sum (W - W0)^2, sum W0^2, elements]
    for name, w in final.items():
        part = part_of(name)
        if part is None or (w.dim() < 2 and part != "final norm"):
            continue
        if name not in initial or initial[name].shape != w.shape:
            raise SystemExit(f"'{name}' {tuple(w.shape)} is not in the rebuilt initial backbone; the run's "
                             "config.yaml does not describe its weights.")
        w0 = initial[name].float()
        acc = sums.setdefault(part, [0.0, 0.0, 0])
        acc[0] += (w.float() - w0).pow(2).sum().item()
        acc[1] += w0.pow(2).sum().item()
        acc[2] += w.numel()
    return [(part, (d / max(n0, 1e-30)) ** 0.5, (d / count) ** 0.5) for part, (d, n0, count)
            in sorted(sums.items(), key=lambda item: _order(item[0]))]


def _order(part: str) -> tuple[int, int]:
    """stem, position table, prefix tokens, blocks in depth order, final norm."""
    head = ("stem", "pos_embed", "cls_token", "reg_token")
    if part in head:
        return 0, head.index(part)
    return (1, int(part.split()[1])) if part.startswith("block") else (2, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    args = p.parse_args()
    print_machine()
    from safetensors.torch import load_file

    for run in map(Path, args.runs):
        weights = run / WEIGHTS
        if not weights.is_file():
            raise SystemExit(f"'{run}' holds no {WEIGHTS}; pass a finished run directory.")
        rows = drift(initial_state(run), load_file(weights))
        print(f"{run}: change of the exported backbone from its initial weights")
        print(f" {'part':>10} {'relative':>9} {'rms':>9}")
        for part, rel, rms in rows:
            print(f" {part:>10} {rel:9.3f} {rms:9.4f}")


if __name__ == "__main__":
    main()
