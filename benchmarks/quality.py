"""What pretraining buys, in one table: each objective at its small-data recipe on an embedded
set, then k-NN (k = 20, cls and avg pool), the linear probe (on average pooling, MAE's; on DINO's
protocol, the cls tokens of the last 4 blocks and the average patch token; on BEiT's, the best block's cls
and average patch token, picked on held-out) and full fine-tuning of its backbone;
under it its twin, the same backbone shape at random weights (k-NN, linear, and fine-tuning from
it: trained with labels only, the supervised row); raw pixels (k-NN, and the same linear probe
on the pixels); ``--ceiling_epochs``: the first objective's twin trained with labels for longer.

    python benchmarks/quality.py [--data cluttered] [--objectives mae,beit,dino@mae33,ibot@mae33]
        [--seeds 0] [--finetune_epochs 20] [--ceiling_epochs 60] [--out runs/quality]
        [--extra "--train.epochs 4"]
    python benchmarks/quality.py --merge runs/a/quality.json runs/b/quality.json ...

``OBJ@START`` is OBJ started from the weights of this seed's START run (``dino@mae``: DINO's preset
with ``--init`` the ``mae`` run, listed before it); its minutes are both runs'. A START that ends in
a number is that objective's preset for that many epochs, trained first if this seed has none
(``dino@mae33``: DINO from a 33-epoch MAE run, the start DINO's ``cluttered`` preset names). A plain
``dino`` (or ``ibot``) is the preset as ``pretrain/dino.py`` runs it, which trains that start itself
inside the run (``start``); ``dino@mae33`` gets the same weights and keeps the start a row of its own.
Runs that already hold a backbone are probed again, not retrained, and a fine-tuning of the same
recipe and epochs is reused (delete --out to start over).
Every figure is one run's; with several seeds each cell is mean +- spread (max - min) / 2.
Several invocations at once: give each ``OMP_NUM_THREADS=1``. More threads than free cores stall
the fused AdamW step on small tensors (on 2 busy cores, 2 threads: 1.8 s a step against 14 ms
with 1), so an oversubscribed fine-tuning takes several times as long; the figures stay right.
``--merge`` prints one such table from the quality.json of separate invocations (objectives or seeds
run apart): a row's cell is over every seed of every file that has the row.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from flops import print_machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(ROOT))  # sslvit, imported where used: --help stays light


def sh(args: list[str], log: Path) -> float:
    """Run a command to completion with its output in ``log``; -> wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{' '.join(args)} failed (rc {rc}); see {log}")
    return time.perf_counter() - t0


def knn(run: Path, pool: str, baselines: bool) -> dict:
    sh([PY, "probes/knn.py", "--ckpt", str(run), "--ks", "20", "--pool", pool, "--baselines", str(baselines).lower(),
        "--picture_queries", "0"], run / f"knn_{pool}.log")
    return {name: r["20"]["top1"] for name, r in json.loads((run / "knn.json").read_text())["results"].items()}


def linear_probe(run: Path, recipe: str = "avg", aug_passes: int = 0) -> float:
    """Best val top-1 of the linear probe on ``run``'s features; ``pixels``: on raw pixels, same heads and grid.
    ``aug_passes`` N: the heads train on N cached passes of RandomResizedCrop (0.5-1), as the reference probes
    train theirs on augmented crops, and are picked and scored on centre crops."""
    # the grid reaches 2.0: on these short runs the best lr sat at the default grid's edge (0.1). The pixels'
    # 3072 inputs overfit 4,050 images at the grid's low edge (0.005 best on cluttered), so theirs goes lower
    low = "0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, " if recipe == "pixels" else ""
    sh([PY, "probes/linear.py", "--ckpt", str(run), "--recipe", recipe, "--head", "mae", "--epochs", "50",
        "--lrs", f"[{low}0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]",
        *(["--aug_passes", str(aug_passes), "--crop_scale", "[0.5, 1.0]"] if aug_passes else [])],
       run / f"linear_{recipe}.log")
    written = run / ("linear_pixels.json" if recipe == "pixels" else "linear.json")
    return json.loads(written.read_text())["best"]["val_top1"]


# One recipe for every row. Layer decay 0.9, not 0.75: the random-init row learns too. blr 4e-3 (lr 1e-3 at
# batch 64) and the probe's small-image head init (0.02, not MAE's 2e-5): on a random-init 6-block ViT-Ti/8,
# 10 epochs, the old recipe (blr 1e-3, head 2e-5) reached 58.9 %, the bare supervised loop of label_pace.py 78.3 %.
FINETUNE = ["--augment", "rrc", "--crop_scale", "[0.5, 1.0]", "--warmup_epochs", "2", "--layer_decay", "0.9",
            "--blr", "4e-3"]


def finetune(run: Path, epochs: int, seed: int) -> float:
    """Full fine-tuning val top-1; a result of the same recipe, epochs and seed already in ``run`` is reused."""
    result = run / "finetune_full" / "finetune.json"
    # seed 0 is the probe's default: left out, so that fine-tunings kept from before the seed was passed still count
    recipe = [*FINETUNE, "--epochs", str(epochs), *(["--seed", str(seed)] if seed else [])]
    stamp = run / "finetune_full" / "quality_recipe.json"
    if result.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        kept = json.loads(result.read_text())
        if "head_init_std" in kept:  # without it, from before the probe's head init by image size
            return kept["val_top1"]
    sh([PY, "probes/finetune.py", "--ckpt", str(run), *recipe, "--eval_every", str(epochs)], run / "finetune.log")
    stamp.write_text(json.dumps(recipe))
    return json.loads(result.read_text())["val_top1"]


def shape_key(run: Path) -> str:
    """A short name for a run's backbone shape (its backbone.json: size, positions, LayerScale, ...)."""
    from sslvit.models.export import read_backbone_config

    spec = dataclasses.asdict(read_backbone_config(run / "backbone.safetensors"))
    spec.pop("grad_checkpointing")  # memory, not weights
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def random_init_run(out: Path, like: Path, seed: int) -> Path:
    """A run folder whose backbone is the shape of ``like``'s, at its initial (random) weights drawn with ``seed``."""
    from sslvit.models.export import export_backbone, read_backbone_config
    from sslvit.models.vit import build_backbone

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "backbone.safetensors").is_file():
        cfg = read_backbone_config(like / "backbone.safetensors")
        torch.manual_seed(seed)
        export_backbone(build_backbone(cfg), cfg, out)
        (out / "config.yaml").write_text((like / "config.yaml").read_text())
    return out


def split_epochs(name: str) -> tuple[str, list[str]]:
    """'mae33' -> ('mae', ['--train.epochs', '33']); 'mae' -> ('mae', [])."""
    m = re.fullmatch(r"([a-z_]+?)(\d+)", name)
    return (m[1], ["--train.epochs", m[2]]) if m else (name, [])


def pretrain(args, run: Path, seed: int) -> float | None:
    """Train ``run`` (named by its objective; ``dino@mae``: DINO started from this seed's ``mae`` run;
    ``mae33``: MAE's preset for 33 epochs) unless it holds a backbone; -> its wall minutes, a started
    run's with its start's added."""
    name, _, start = run.name.partition("@")
    obj, epochs = split_epochs(name)
    weights = run.parent / start / "backbone.safetensors"
    if start and not weights.is_file():
        if not split_epochs(start)[1]:
            raise SystemExit(f"{run.name} starts from {start}'s run of this seed and {weights} is missing; "
                             f"list {start} before {run.name} in --objectives.")
        pretrain(args, run.parent / start, seed)  # a start of a named length: trained here, for this row
    init = ["--init", str(weights)] if start else []
    wall_file = "quality_wall_s.json"  # the pretraining's wall time, kept for a re-probe
    if not (run / "backbone.safetensors").is_file():
        run.parent.mkdir(parents=True, exist_ok=True)
        wall = sh([PY, f"pretrain/{obj}.py", "--data", args.data, "--out", str(run), "--train.seed", str(seed),
                   *init, *shlex.split(args.extra), *epochs], run.parent / f"{run.name}.log")
        (run / wall_file).write_text(json.dumps(wall))
    walls = [run / wall_file] + ([run.parent / start / wall_file] if start else [])
    if not all(f.is_file() for f in walls):
        return None
    return sum(json.loads(f.read_text()) for f in walls) / 60


def one_seed(args, seed: int) -> dict[str, dict]:
    """Per objective its row and its random twin's (the same backbone shape at random weights: k-NN,
    linear, and fine-tuning from it, i.e. trained with labels only); raw pixels; the ceiling."""
    rows: dict[str, dict] = {}
    root = Path(args.out) / f"seed{seed}"
    linear = functools.partial(linear_probe, aug_passes=args.linear_aug_passes)
    objectives = args.objectives.split(",")
    for obj in objectives:
        run = root / obj
        wall = pretrain(args, run, seed)
        cls, avg = knn(run, "cls", True), knn(run, "avg", True)
        ft = args.finetune_epochs
        rows[obj] = {"knn_cls": cls["pretrained"], "knn_avg": avg["pretrained"], "linear": linear(run),
                     "linear_dino": linear(run, "dino_avg"), "linear_blocks": linear(run, "blocks"),
                     "finetune": finetune(run, ft, seed) if ft else None,
                     "wall_min": wall}
        # objectives differ in shape (BEiT's LayerScale, MAE's fixed positions), and the shape alone moved the
        # labelled row by about 10 points: each is compared with random weights of its own shape
        twin = random_init_run(root / f"random_init-{shape_key(run)}", run, seed)
        rows[f"{obj}'s shape at random init"] = {"knn_cls": cls["random_init"], "knn_avg": avg["random_init"],
                                                 "linear": linear(twin), "linear_dino": linear(twin, "dino_avg"),
                                                 "linear_blocks": linear(twin, "blocks"),
                                                 "finetune": finetune(twin, ft, seed) if ft else None}
        rows.setdefault("raw pixels", {"knn_cls": cls["raw_pixels"], "knn_avg": avg["raw_pixels"]})
    rows["raw pixels"]["linear"] = rows["raw pixels"]["linear_dino"] = rows["raw pixels"]["linear_blocks"] = \
        linear(twin, "pixels")  # one recipe
    if args.ceiling_epochs:  # the first objective's twin again, in its own folder, so both fine-tunings are kept
        first = root / objectives[0]
        longer = random_init_run(root / f"random_init_long-{shape_key(first)}", first, seed)
        rows[f"labels only, {args.ceiling_epochs} epochs ({objectives[0]}'s shape)"] = {
            "finetune": finetune(longer, args.ceiling_epochs, seed)}
    return rows


def cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} +- {(max(values) - min(values)) / 2:.1f}"


def table(per_seed: list[dict]) -> str:
    cols = [("knn_cls", "k-NN cls"), ("knn_avg", "k-NN avg"), ("linear", "linear"),
            ("linear_dino", "linear, DINO's protocol"), ("linear_blocks", "linear, BEiT's (best block)"),
            ("finetune", "fine-tune"),
            ("wall_min", "pretrain min")]
    names = list(dict.fromkeys(n for rows in per_seed for n in rows))
    names.sort(key=lambda n: n == "raw pixels")  # the common reference under every objective's pair
    lines = ["| | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(cell([rows.get(n, {}).get(k) for rows in per_seed]) for k, _ in cols)
                     + " |")
    return "\n".join(lines)


def merged(files: list[str]) -> list[dict]:
    """The per-seed rows of several quality.json files, as one list for ``table``."""
    per_seed = []
    for f in files:
        if not Path(f).is_file():
            raise SystemExit(f"--merge: {f} is not a file; give the quality.json that a run of quality.py wrote.")
        per_seed += json.loads(Path(f).read_text())
    return per_seed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="cluttered")
    p.add_argument("--objectives", default="mae,beit,dino@mae33,ibot@mae33")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--finetune_epochs", type=int, default=20, help="0: no fine-tuning")
    p.add_argument("--ceiling_epochs", type=int, default=0,
                   help="also the supervised row trained this many epochs: what the set allows, past the budget")
    p.add_argument("--linear_aug_passes", type=int, default=0,
                   help="N: every linear probe (pixels too) trains on N augmented passes, not the centre crop")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--extra", default="", help="more keys for every pretraining run, e.g. '--train.epochs 4'")
    p.add_argument("--merge", nargs="+", metavar="QUALITY_JSON",
                   help="only print the table of these quality.json files, merged; nothing is run")
    args = p.parse_args()
    if args.merge:
        print(table(merged(args.merge)))
        return
    print_machine()
    print(f"data {args.data}, objectives {args.objectives}, seeds {args.seeds}, fine-tune {args.finetune_epochs} "
          f"epochs, extra keys '{args.extra}'"
          + (f", linear probes on {args.linear_aug_passes} augmented passes" if args.linear_aug_passes else ""))
    per_seed = [one_seed(args, int(s)) for s in args.seeds.split(",")]
    (Path(args.out) / "quality.json").write_text(json.dumps(per_seed, indent=1))
    print(table(per_seed))


if __name__ == "__main__":
    main()
