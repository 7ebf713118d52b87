"""Start-up time of the commands a user types first: ``--help`` and a bad key answer before any
work starts, so their time is all imports.

Times, as fresh processes (``python CMD``, nothing cached in the process), round-robin, one
warm-up round (the page cache) then ``--reps`` timed rounds, median and min:
  mae --help        python pretrain/mae.py --help
  knn --help        python probes/knn.py --help
  mae bad key       python pretrain/mae.py --train.epochs 0   (one sentence, exit code 2)
Each command also reports which heavy libraries it imported (timm, torchvision, faiss,
tensorboard, sklearn), from ``-X importtime``. ``--repo DIR`` times another checkout (e.g. the
commit before the lazy imports: ``git worktree add /tmp/before <commit>``) with its own sslvit.

    python benchmarks/startup.py [--reps 5] [--repo DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import print_machine  # noqa: E402

COMMANDS = {
    "mae --help": ["pretrain/mae.py", "--help"],
    "knn --help": ["probes/knn.py", "--help"],
    "mae bad key": ["pretrain/mae.py", "--train.epochs", "0"],
}
HEAVY = ("timm", "torchvision", "faiss", "tensorboard", "sklearn")


def run(repo: Path, args: list[str], importtime: bool = False) -> tuple[float, str]:
    """-> (wall seconds, stderr) of ``python ARGS`` in ``repo`` with that repo's sslvit first on the path."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, done.stderr


def heavy_imports(stderr: str) -> list[str]:
    """The HEAVY top-level packages in an ``-X importtime`` report."""
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines()
             if line.startswith("import time:")}
    return [h for h in HEAVY if h in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    print_machine(f"repo {args.repo}")
    times = {name: [] for name in COMMANDS}
    for r in range(args.reps + 1):
        for name, cmd in COMMANDS.items():
            seconds, _ = run(args.repo, cmd)
            if r:  # round 0 warms the page cache
                times[name].append(seconds)
    for name, cmd in COMMANDS.items():
        _, report = run(args.repo, cmd, importtime=True)
        t = times[name]
        print(f"{name:12s} median {statistics.median(t):5.2f} s  min {min(t):5.2f} s   imports "
              f"{', '.join(heavy_imports(report)) or 'none of ' + '/'.join(HEAVY)}")
    print("load average at the end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
