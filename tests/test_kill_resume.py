"""kill -9, twice (once inside a checkpoint write), then --resume: the run finishes, loses at most
one checkpoint interval, and ends with the weights of an uninterrupted run (MAE digits preset)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--train.precision", "fp32", "--train.epochs", "3", "--train.save_every", "1", "--train.knn_every", "0", "--train.picture_every", "3",
        "--train.log_every", "1"]
STEPS_PER_EPOCH = 1500 // 128


def _start(out: Path, *extra, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu.yaml"),
           "--num_cpu_threads_per_process", "1", str(REPO / "pretrain/mae.py"), "--out", str(out), *ARGS, *extra]
    # a new session: kill -9 reaches the launcher's child (the training process) too
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill(proc: subprocess.Popen) -> str:
    """kill -9 the launcher and the training process; -> what they had printed."""
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return out


def _last_step(out: Path) -> int:
    log = out / "log.jsonl"
    if not log.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in log.read_text().splitlines() if x.strip()]
    return max(steps, default=0)


def _wait(predicate, timeout=300):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "the run never got there"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _resumed_step(output: str) -> int:
    found = re.findall(r"Resuming from .*?\(epoch \d+, step (\d+)\)", output)
    assert found, output[-2000:]
    return int(found[0])


def test_kill_9_twice_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    from sslvit.train.checkpoint import latest_checkpoint

    _finish(_start(tmp_path / "straight"))

    run = tmp_path / "killed"
    target = int(np.random.default_rng().integers(STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH))  # in epoch 2
    first = _start(run)
    _wait(lambda: _last_step(run) >= target)
    _kill(first)
    reached = [_last_step(run)]

    # second kill: inside the write of the epoch-2 checkpoint (files written, not yet renamed into place)
    second = _start(run, "--resume", env_extra={"SSLVIT_TEST_CHECKPOINT_PAUSE": "60"})
    _wait(lambda: any((p / "model.safetensors").exists() for p in (run / "checkpoints").glob(".tmp_epoch*")))
    reached.append(_last_step(run))
    resumed = [_resumed_step(_kill(second))]
    assert latest_checkpoint(run).name == "epoch_0001"  # the half-written one is not trusted

    resumed.append(_resumed_step(_finish(_start(run, "--resume"))))
    lost = [r - s for r, s in zip(reached, resumed)]
    a = load_file(str(tmp_path / "straight" / "backbone.safetensors"))
    b = load_file(str(run / "backbone.safetensors"))
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    print(f"kill -9 at steps {reached}, resumed from steps {resumed}: lost {lost} steps "
          f"(interval {STEPS_PER_EPOCH}); largest final weight difference {diff}")
    assert all(0 <= n <= STEPS_PER_EPOCH for n in lost)
    assert diff == 0.0
