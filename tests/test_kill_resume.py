"""Interrupted runs end with the weights of an uninterrupted one (MAE digits preset, fp32):
kill -9, twice (once inside a checkpoint write), then --resume loses at most one checkpoint
interval; SIGTERM and SIGINT stop at the next step with a checkpoint at that step, so --resume
continues mid-epoch and loses nothing."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--train.precision", "fp32", "--train.epochs", "3", "--train.save_every", "1", "--train.knn_every", "0",
        "--train.picture_every", "3", "--train.log_every", "1"]
STEPS_PER_EPOCH = 1500 // 128


def _start(out: Path, *extra, env_extra=None, launcher=True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu.yaml"),
              "--num_cpu_threads_per_process", "1"] if launcher else [sys.executable]
    cmd = [*launch, str(REPO / "pretrain/mae.py"), "--out", str(out), *ARGS, *extra]
    # a new session: kill -9 reaches the launcher's child (the training process) too. SIGINT as a
    # terminal's foreground job has it: a suite started in the background (`make test &`) inherits it
    # ignored, and the trainer rightly keeps an ignored Ctrl-C ignored (stop_signals.StopRequest)
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("straight") / "run"
    _finish(_start(out))
    return out


def _largest_difference(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(str(a_dir / "backbone.safetensors")), load_file(str(b_dir / "backbone.safetensors"))
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_kill_9_twice_then_resume_ends_with_the_uninterrupted_weights(tmp_path, straight):
    from sslvit.train.checkpoint import latest_checkpoint

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
    diff = _largest_difference(straight, run)
    print(f"kill -9 at steps {reached}, resumed from steps {resumed}: lost {lost} steps "
          f"(interval {STEPS_PER_EPOCH}); largest final weight difference {diff}")
    assert all(0 <= n <= STEPS_PER_EPOCH for n in lost)
    assert diff == 0.0


def _stop(proc: subprocess.Popen, sig: int, run: Path, target: int, whom: str) -> str:
    """Send ``sig`` once the run is past ``target`` steps, to the launcher alone or to the training
    process itself; -> what was printed, after every process of the run has ended."""
    _wait(lambda: _last_step(run) >= target)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)  # the pipe closes only when the trainer, too, has exited
    print(f"--- {signal.Signals(sig).name} to the {whom}:\n{out[-1500:]}")
    return out


def _stopped_at(output: str) -> int:
    found = re.findall(r"Stopped by SIG\w+ at step (\d+) \(epoch \d+, batch \d+ of \d+\); checkpoint (\S+) written",
                       output)
    assert len(found) == 1, output[-3000:]
    return int(found[0][0])


def test_sigterm_and_sigint_stop_with_a_checkpoint_and_resume_mid_epoch_exactly(tmp_path, straight):
    """SIGTERM to the launcher alone (what a scheduler may do), then Ctrl-C's SIGINT to the trainer:
    each time the trainer stops at the next step, writes a checkpoint there and says so in one
    line with no traceback; --resume continues mid-epoch and the run ends bit for bit equal."""
    from sslvit.train.checkpoint import latest_checkpoint, read_meta

    run = tmp_path / "signalled"
    rng = np.random.default_rng()
    stops = []
    for sig, whom, epoch in ((signal.SIGTERM, "launcher", 1), (signal.SIGINT, "trainer", 2)):
        extra = ["--train.save_every", "3"] + (["--resume"] if stops else [])  # no epoch-end checkpoint to fall back on
        proc = _start(run, *extra, launcher=whom == "launcher")
        # in the first half of the epoch: the signal must land while steps remain (epoch 2 is the last)
        target = int(rng.integers(epoch * STEPS_PER_EPOCH + 1, epoch * STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2))
        out = _stop(proc, sig, run, target, whom)
        step = _stopped_at(out)
        assert "Traceback" not in out and "KeyboardInterrupt" not in out
        if whom == "trainer":
            assert proc.returncode == 128 + sig  # the launcher's own exit status is the signal that killed it
        ckpt = latest_checkpoint(run)
        meta = read_meta(ckpt)
        assert "_step_" in ckpt.name and meta["step"] == step and meta["progress"]["batches_done"] > 0
        assert target <= step < (epoch + 1) * STEPS_PER_EPOCH  # mid-epoch, within a step or two of the signal
        assert _last_step(run) == step  # nothing ran on after the stop (no orphaned trainer)
        stops.append(step)
    out = _finish(_start(run, "--resume", "--train.save_every", "3"))
    assert f"(epoch 2, step {stops[-1]}). It was taken inside epoch 3" in out, out[-2000:]
    diff = _largest_difference(straight, run)
    print(f"stopped at steps {stops}; largest final weight difference {diff}")
    assert diff == 0.0
    epoch_losses = [[json.loads(x)["epoch_loss"] for x in (d / "log.jsonl").read_text().splitlines()
                     if "epoch_loss" in x]
                    for d in (straight, run)]
    assert epoch_losses[0] == epoch_losses[1]  # the epochs' mean losses carry across the stops too


def _start_two(out: Path, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
           "--main_process_port", "29557", str(REPO / "pretrain/mae.py"), "--out", str(out), *ARGS,
           "--train.save_every", "3", *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_a_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_resumes_exactly(tmp_path):
    """The signal reaches only the main training process (as `kill PID` would); the flag is agreed
    at every step, so both processes checkpoint the same step and leave together, and --resume
    with both continues mid-epoch to the weights of an unbroken 2-process run."""
    from sslvit.train.checkpoint import latest_checkpoint, read_meta

    _finish(_start_two(tmp_path / "straight"))
    run, steps_per_epoch = tmp_path / "signalled", 1500 // (128 * 2)
    proc = _start_two(run)
    target = int(np.random.default_rng().integers(steps_per_epoch + 1, 2 * steps_per_epoch - 1))
    _wait(lambda: _last_step(run) >= target)
    os.kill(int((run / ".lock").read_text()), signal.SIGTERM)  # the lock file names the main process
    out, _ = proc.communicate(timeout=120)
    step = _stopped_at(out)
    meta = read_meta(latest_checkpoint(run))
    assert meta["step"] == step and meta["progress"]["batches_done"] > 0 and step < 2 * steps_per_epoch, out[-3000:]
    assert _last_step(run) == step
    _finish(_start_two(run, "--resume"))
    diff = _largest_difference(tmp_path / "straight", run)
    print(f"2 processes: stopped at step {step}; largest final weight difference {diff}")
    assert diff == 0.0
