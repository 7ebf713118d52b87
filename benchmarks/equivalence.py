"""The multi-process equivalence table and what gloo costs on this machine.

For MAE and DINO (the tiny setups of ``tests/test_equivalence.py``: ViT-Ti depth 2, 16 px,
the test's 160 random training images, global batch 16, 20 steps), four runs each, every one a fresh
``accelerate launch`` process tree with 1 thread per process:

  1 x B      one process, batch 16 (the reference);
  1 x 2 x B/2  one process, batch 8, 2 accumulated micro-batches;
  2 x B/2    two gloo processes (launch/cpu_2proc.yaml), batch 8 each;
  1 x B, 2 threads  the reference again with both cores, the fair baseline for what the two
             processes cost (gloo's all-reduces against one process's intra-op threads).

Prints, against the reference, the largest relative loss difference over the 20 logged steps,
the largest relative weight difference (key biases aside, see the test's docstring) and the
largest key-bias difference; then the training time (sum of the epochs' times, start-up
excluded) and the wall time of each run, as ratios to the reference.

    python benchmarks/equivalence.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flops import print_machine  # noqa: E402  (benchmarks/flops.py)
from tests.test_equivalence import OBJECTIVES, _args, compare, write_folder160  # noqa: E402  (the test's own setups)


def launch(name: str, data: Path, out: Path, batch: int, accum: int, processes: int, threads: int = 1) -> float:
    config = "launch/cpu_2proc.yaml" if processes == 2 else "launch/cpu.yaml"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / config),
           "--num_cpu_threads_per_process", str(threads), str(REPO / OBJECTIVES[name][1]),
           *_args(name, data, out, batch, accum)]
    if processes == 2:
        cmd[3:3] = ["--main_process_port", "29561"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - t


def train_time(run: Path) -> float:
    return sum(r["epoch_time_s"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
               if "epoch_time_s" in r)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options; --help says what it does
    print_machine("each run's processes at 1 thread, but the '2 thr' one")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder160(Path(tmp) / "imgs")
        print(f"{'objective':9s} {'run':12s} {'loss rel':>10s} {'weight rel':>11s} {'key bias':>10s} "
              f"{'train s':>8s} {'x ref':>6s} {'wall s':>7s} {'x ref':>6s}")
        for name in OBJECTIVES:
            runs = {"1 x B": (16, 1, 1, 1), "1 x 2 x B/2": (8, 2, 1, 1), "2 x B/2": (8, 1, 2, 1),
                    "1 x B, 2 thr": (16, 1, 1, 2)}
            walls, outs = {}, {}
            for label, (batch, accum, procs, threads) in runs.items():
                outs[label] = Path(tmp) / f"{name}-{''.join(c for c in label if c.isalnum())}"
                walls[label] = launch(name, data, outs[label], batch, accum, procs, threads)
            ref = outs["1 x B"]
            for label, out in outs.items():
                loss_rel, weight_rel, key_bias = compare(ref, out) if label != "1 x B" else (0.0, 0.0, 0.0)
                print(f"{name:9s} {label:12s} {loss_rel:10.2e} {weight_rel:11.2e} {key_bias:10.2e} "
                      f"{train_time(out):8.2f} {train_time(out) / train_time(ref):6.2f} "
                      f"{walls[label]:7.1f} {walls[label] / walls['1 x B']:6.2f}")
    print("load average: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
