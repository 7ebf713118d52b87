"""Start-up time of the commands a user types first: ``--help`` and a bad key answer before any
work starts, so their time is all imports.

Times, as fresh processes (``python CMD``, nothing cached in the process), round-robin, one
warm-up round (the page cache) then ``--reps`` timed rounds: median and min of the wall time, and
the median CPU time (user + system of the child), which a loaded shared machine inflates less:
  mae --help        python pretrain/mae.py --help
  knn --help        python probes/knn.py --help
  mae bad key       python pretrain/mae.py --train.epochs 0   (one sentence, exit code 2)
Each command also reports which heavy libraries it imported (timm, torchvision, faiss,
tensorboard, sklearn), from ``-X importtime``. ``--compare DIR`` times another checkout too (e.g.
the commit before the lazy imports: ``git archive <commit> | tar -x -C DIR``), each with its own
sslvit, interleaved with this one command by command, so a shared machine's load hits both alike.

    python benchmarks/startup.py [--reps 5] [--compare DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(repo: Path, args: list[str], importtime: bool = False) -> tuple[float, float, str]:
    """-> (wall seconds, CPU seconds, stderr) of ``python ARGS`` in ``repo`` with that repo's sslvit
    first on the path."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    t, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, _children_cpu() - cpu, done.stderr


def heavy_imports(stderr: str) -> list[str]:
    """The HEAVY top-level packages in an ``-X importtime`` report."""
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines()
             if line.startswith("import time:")}
    return [h for h in HEAVY if h in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compare", type=Path, help="another checkout, timed interleaved with this one")
    args = ap.parse_args()
    repos = {"this": Path(__file__).resolve().parents[1]}
    if args.compare:
        repos["compare"] = args.compare.resolve()
    print_machine(" | ".join(f"{k}: {v}" for k, v in repos.items()))
    times = {(r, name): [] for r in repos for name in COMMANDS}
    cpus = {(r, name): [] for r in repos for name in COMMANDS}
    for rep in range(args.reps + 1):
        for name, cmd in COMMANDS.items():
            for r, repo in repos.items():
                seconds, cpu, _ = run(repo, cmd)
                if rep:  # round 0 warms the page cache
                    times[(r, name)].append(seconds)
                    cpus[(r, name)].append(cpu)
    for name, cmd in COMMANDS.items():
        for r, repo in repos.items():
            _, _, report = run(repo, cmd, importtime=True)
            t = times[(r, name)]
            print(f"{r:8s} {name:12s} wall median {statistics.median(t):5.2f} s  min {min(t):5.2f} s  CPU median "
                  f"{statistics.median(cpus[(r, name)]):5.2f} s   imports "
                  f"{', '.join(heavy_imports(report)) or 'none of ' + '/'.join(HEAVY)}")
        if args.compare:
            wall, cpu = ((statistics.median(m[("compare", name)]) / statistics.median(m[("this", name)]))
                         for m in (times, cpus))
            print(f"{'':8s} {name:12s} this checkout {wall:.2f}x faster (wall), {cpu:.2f}x less CPU")
    print("load average at the end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
