"""Faults: non-finite steps are skipped and bound, checkpoints survive failed writes and kills."""
import contextlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

import sslvit.objectives.mae as mae
from sslvit.files import LOW_SPACE
from sslvit.train.checkpoint import latest_checkpoint
from sslvit.train.loop import TrainingDiverged
from tests.run_checks import sitecustomized
from tests.test_end_to_end import _run


def _inject(monkeypatch, bad: dict):
    """Patch MAE.forward: at forward number k (1-based), bad[k] = 'loss' makes the loss NaN,
    'gradients' makes one weight's gradient inf. -> the list of a weight's value at each forward."""
    real = mae.MAE.forward
    seen = []

    def forward(self, imgs):
        seen.append(self.backbone.blocks[0].attn.qkv.weight.detach().clone())
        out = real(self, imgs)
        kind = bad.get(len(seen))
        if kind == "loss":
            out["loss"] = out["loss"] * float("nan")
        elif kind == "gradients":  # a one-shot hook: this backward only
            def once(g):
                handle.remove()
                return g * float("inf")

            handle = self.backbone.blocks[0].mlp.fc1.weight.register_hook(once)
        return out

    monkeypatch.setattr(mae.MAE, "forward", forward)
    return seen


def _log(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_a_non_finite_step_is_not_applied_and_the_run_goes_on(tmp_path, image_folder, fresh_accelerate, monkeypatch):
    seen = _inject(monkeypatch, {2: "loss", 4: "gradients"})
    run = _run(tmp_path / "run", image_folder)  # 48 training images, batch 16: 3 steps per epoch, 6 in all
    skipped = {r["step"]: r["skipped_step"] for r in _log(run) if "skipped_step" in r}
    assert skipped == {2: "loss", 4: "gradients"}
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[3], seen[4])  # the bad steps changed nothing
    assert not torch.equal(seen[2], seen[3]) and not torch.equal(seen[4], seen[5])  # good steps did (step 1 has lr 0)
    assert all(torch.isfinite(w).all() for w in seen)
    epochs = [r for r in _log(run) if "epoch_loss" in r]
    assert len(epochs) == 2 and all(r["epoch_loss"] == r["epoch_loss"] for r in epochs)  # not NaN


def test_consecutive_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, image_folder,
                                                                                 fresh_accelerate, monkeypatch):
    _inject(monkeypatch, {k: "loss" for k in range(4, 100)})  # good epoch 1 (steps 1-3), then NaN for ever
    with pytest.raises(TrainingDiverged) as err:
        _run(tmp_path / "run", image_folder, ["--train.max_bad_steps", "2", "--train.epochs", "3"])
    msg = str(err.value)
    assert "2 steps in a row, up to step 5" in msg and "train.blr" in msg and "fp16" in msg
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "epoch_0001" and "epoch_0001" in msg
    assert (last / "model.safetensors").is_file()


def test_an_unwritable_or_full_output_directory_stops_before_training(tmp_path, image_folder, fresh_accelerate,
                                                                      monkeypatch):
    import shutil

    from sslvit.train.checkpoint import CheckpointError

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match="Cannot write to the output directory"):
        _run(tmp_path / "a_file" / "run", image_folder)
    fresh_accelerate()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CheckpointError, match="GB free"):
        _run(tmp_path / "run", image_folder)
    assert not (tmp_path / "run" / "log.jsonl").exists()  # nothing trained


def main_process_files_limited_to(size: int, folder, launched: bool) -> dict:
    """The environment for a subprocess whose main process's files stop at ``size`` bytes, as on a full
    disk: a ``sitecustomize`` in ``folder`` sets its RLIMIT_FSIZE. ``launched``: the command is a
    launcher, which stays unlimited (its processes would inherit its limit), and only rank 0 is limited."""
    rank = "os.environ.get('RANK')" if launched else "os.environ.get('RANK', '0')"
    return sitecustomized(folder, "import os\n"
                                  f"if {rank} == '0':\n"
                                  "    import resource, signal\n"
                                  "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                                  f"    resource.setrlimit(resource.RLIMIT_FSIZE, ({size}, "
                                  "resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n")


@contextlib.contextmanager
def _files_limited_to(size: int):
    """Every file this process writes ends at ``size`` bytes (RLIMIT_FSIZE, SIGXFSZ ignored): a write
    past it fails with EFBIG inside the real writers (safetensors, torch.save), as a full disk's does."""
    import resource
    import signal

    old_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_signal)


@pytest.mark.parametrize("fails", ["model.safetensors", "optimizer.bin", "OSError"])
def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one_latest(fails, tmp_path, image_folder,
                                                                            fresh_accelerate, monkeypatch):
    """A full disk as the writers meet it: safetensors raises SafetensorError and torch.save a
    RuntimeError, not OSError; before 2026-12-07 both ended the run in a traceback."""
    import errno
    from pathlib import Path

    from accelerate import Accelerator

    from sslvit.train.checkpoint import CheckpointError

    real = Accelerator.save_state
    calls = []

    def fails_second_time(self, output_dir, **kw):
        calls.append(output_dir)
        if len(calls) < 2:
            return real(self, output_dir, **kw)
        if fails == "OSError":
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        model = (tmp_path / "run" / "checkpoints" / "epoch_0001" / "model.safetensors").stat().st_size
        with _files_limited_to(model if fails == "optimizer.bin" else 1000):  # the model fits, or nothing does
            return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", fails_second_time)
    why = {"OSError": "No space left on device", "model.safetensors": "File too large",
           "optimizer.bin": "torch.save could not write its file"}[fails]
    room = shutil.disk_usage(tmp_path).free >= LOW_SPACE  # torch.save's error names no cause: the free space decides
    mend = {"OSError": "Free some space", "model.safetensors": "Lift the file-size limit that refused it (`ulimit -f`, "
            "or the file system's own)", "optimizer.bin": "Find what refused the write (its disk has room)" if room
            else "Free some space"}[fails]
    with pytest.raises(CheckpointError, match=rf"^Writing checkpoint 'epoch_0002' failed \(.*{why}.*GB free on its "
                                              r"disk\); the latest checkpoint is still .*epoch_0001. "
                                              rf"{re.escape(mend)}, then --resume\.$"):
        _run(tmp_path / "run", image_folder)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["epoch_0001"]  # no half-written folder left beside it
    assert latest_checkpoint(tmp_path / "run").name == "epoch_0001"


class _Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl"])
def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(tmp_path, image_folder, fresh_accelerate, victim):
    import pickle

    from sslvit.train.checkpoint import CheckpointError

    _run(tmp_path / "run", image_folder, ["--train.epochs", "1"])
    marker = tmp_path / "pwned"
    ckpt = latest_checkpoint(tmp_path / "run")
    if victim.endswith(".bin"):  # torch's zip container, as accelerate writes the optimizer
        torch.save({"state": _Payload(marker)}, ckpt / victim)
    else:
        (ckpt / victim).write_bytes(pickle.dumps({"state": _Payload(marker)}))
    fresh_accelerate()
    with pytest.raises(CheckpointError, match="not loaded"):
        _run(tmp_path / "run", image_folder, ["--resume", "--train.epochs", "2"])
    assert not marker.exists()


@pytest.mark.parametrize("launch, port", [("cpu_2proc", 29568), ("fsdp_cpu_2proc", 29578)])
def test_a_checkpoint_write_that_fails_on_one_process_ends_every_process_with_a_sentence(launch, port, tmp_path,
                                                                                        image_folder):
    """Two processes; the main one's files stop at 60 KB (a file-size limit), so its part of the first
    checkpoint meets a full disk. Under DDP it used to raise alone: the other waited at the next barrier
    until gloo broke it and printed that traceback, or met the folder the main one had removed under its
    own write. Under FSDP torch.distributed.checkpoint raises on every process, but as a traceback.
    Every process now ends with the failed process's sentence."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_end_to_end import TINY

    env = main_process_files_limited_to(60000, tmp_path / "inject", launched=True)
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / f"launch/{launch}.yaml"),
           "--main_process_port", str(port), str(repo / "pretrain/mae.py"), *TINY, "--data", str(image_folder),
           "--out", str(tmp_path / "run"), "--train.epochs", "1", "--train.knn_every", "0",
           "--train.picture_every", "100"]  # the pictures (a warning when refused) would come after the checkpoint
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    failed = "error: Writing checkpoint 'epoch_0001' failed ("
    why = ("Error while serializing: I/O error: File too large (os error 27), on process 0" if launch == "cpu_2proc"
           else "process 0 could not write its shard of the state")  # torch.distributed.checkpoint's, on each
    lines = [x for x in out.splitlines() if x.startswith("error: ")]
    # each process carries the main one's reason: the launcher stops the other as soon as one exits, so
    # either may be the only one to print
    assert done.returncode != 0 and lines and all(x.startswith(f"{failed}{why}; ") for x in lines), out[-3000:]
    room = shutil.disk_usage(tmp_path).free >= LOW_SPACE
    mend = ("Lift the file-size limit that refused it (`ulimit -f`, or the file system's own)" if launch == "cpu_2proc"
            else "Find what refused the write (its disk has room)" if room else "Free some space")  # DCP names none
    assert all(x.endswith(f"no checkpoint was written before it. {mend}, then start the run again.") for x in lines)
    assert "[rank0]: Traceback" not in out and "[rank1]: Traceback" not in out  # the launcher's own report aside
    assert "Report:" not in out and not (tmp_path / "run").exists()  # nothing half-written, no report named


def _rank_1_at_its_backward(n: int, then: str) -> str:
    """A sitecustomize that makes rank 1 run ``then`` (indented code) at its ``n``-th backward."""
    return ("import os\n"
            "if os.environ.get('RANK') == '1':\n"
            "    import torch\n"
            "    _backward, _calls = torch.Tensor.backward, [0]\n"
            "    def backward(self, *args, **kwargs):\n"
            "        _calls[0] += 1\n"
            f"        if _calls[0] == {n}:\n"
            f"{then}"
            "        return _backward(self, *args, **kwargs)\n"
            "    torch.Tensor.backward = backward\n")


def _two_processes(tmp_path, image_folder, port: int, rank_1: str, epochs: int):
    """Two launched processes of a tiny MAE run (one step an epoch), whose rank 1 Python first runs
    the ``rank_1`` sitecustomize. -> (the finished process, its stdout + stderr)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_end_to_end import TINY

    env = sitecustomized(tmp_path / "inject", rank_1)
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "launch/cpu_2proc.yaml"),
           "--main_process_port", str(port), str(repo / "pretrain/mae.py"), *TINY, "--data", str(image_folder),
           "--out", str(tmp_path / "run"), "--train.epochs", str(epochs), "--train.knn_every", "0"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    return done, done.stdout + done.stderr


def test_a_process_whose_peer_dies_mid_run_ends_with_a_sentence_not_gloos_traceback(tmp_path, image_folder):
    """Rank 1 is killed (SIGKILL, as the out-of-memory killer does) at its third backward. Rank 0's
    next collective raised gloo's "Connection closed by peer" (or "reset") RuntimeError, a traceback
    through the loop's loss reduction; it is one sentence pointing at the dead process."""
    kill = "            import signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    done, out = _two_processes(tmp_path, image_folder, 29588, _rank_1_at_its_backward(3, kill), epochs=6)
    lines = [x for x in out.splitlines() if x.startswith("error: ")]
    assert done.returncode != 0 and "exitcode  : -9" in out, out[-3000:]  # the launcher's report of rank 1
    said = [f"error: {PEER_LOST % why}" for why in ("Connection closed by peer", "Connection reset by peer")]
    assert len(lines) == 1 and lines[0].startswith(tuple(said)), out[-3000:]  # which, the socket's timing decides
    assert "[rank0]: Traceback" not in out


def test_another_processs_error_is_a_line_of_its_own_not_glued_to_the_main_processs_bar(tmp_path, image_folder):
    """Rank 1 meets an unreadable image at its 5th backward (one step an epoch: the 5th epoch's bar is
    on the terminal they share, drawn by rank 0 with no newline). Its sentence came out glued to the
    end of that bar (`epoch 5/6: 0%| | 0/1 [00:00<?, ?it/s]error: Cannot read ...`); it is a line of its own. (Rank 0
    may say its peer ended first, or be stopped by the launcher before it can.)"""
    unreadable = ("            from sslvit.data.folder import DataError\n"
                  "            raise DataError(\"Cannot read 'x.png' (injected); move it out of the folder.\")\n")
    done, out = _two_processes(tmp_path, image_folder, 29613, _rank_1_at_its_backward(5, unreadable), epochs=6)
    lines = [x for x in out.splitlines() if x.startswith("error: ")]
    assert done.returncode != 0 and "epoch 5/6" in out, out[-3000:]
    assert "error: Cannot read 'x.png' (injected); move it out of the folder." in lines, out[-3000:]


def test_a_backbone_the_full_disk_refused_is_one_sentence_and_resume_writes_it_again(tmp_path, image_folder,
                                                                                   fresh_accelerate, monkeypatch,
                                                                                   capsys):
    """The last epoch's checkpoint is written, then the backbone's safetensors meets a full disk: one
    sentence (it was a SafetensorError traceback), and --resume of the finished run writes the backbone
    from that checkpoint without training (it used to say "Done" with no backbone.safetensors)."""
    from safetensors.numpy import load_file

    import sslvit.train.run_outputs as run_outputs
    from sslvit.files import OutputError

    real = run_outputs.export_backbone

    def full_at_the_end(backbone, cfg, run_dir, state=None):
        if (run_dir / "checkpoints" / "epoch_0002").is_dir():
            with _files_limited_to(1000):
                return real(backbone, cfg, run_dir, state=state)
        return real(backbone, cfg, run_dir, state=state)

    monkeypatch.setattr(run_outputs, "export_backbone", full_at_the_end)
    run = tmp_path / "run"
    mend = "lift the file-size limit that refused it (`ulimit -f`, or the file system's own)"
    with pytest.raises(OutputError, match=rf"^Writing the backbone into '{run}' failed \(.*File too large.*\); the "
                                          rf"checkpoint before it is written: {re.escape(mend)}, then --resume writes"):
        _run(run, image_folder)
    epoch_1 = load_file(str(run / "backbone.safetensors"))  # the first epoch's export, still whole
    log = (run / "log.jsonl").read_text()
    monkeypatch.setattr(run_outputs, "export_backbone", real)
    fresh_accelerate()
    capsys.readouterr()
    _run(run, image_folder, ["--resume"])
    out = capsys.readouterr().out
    last = run / "checkpoints" / "epoch_0002"
    assert f"The run's 2 epochs were trained already; the backbone is written again from {last}." in out
    added = [json.loads(x) for x in (run / "log.jsonl").read_text()[len(log):].splitlines()]
    assert len(added) == 1 and "objective" in added[0]  # the session's header; nothing trained, no training time
    backbone = load_file(str(run / "backbone.safetensors"))
    checkpoint = load_file(str(run / "checkpoints" / "epoch_0002" / "model.safetensors"))
    assert backbone.keys() == {k.removeprefix("backbone.") for k in checkpoint if k.startswith("backbone.")}
    for k, v in backbone.items():
        np.testing.assert_array_equal(v, checkpoint[f"backbone.{k}"], err_msg=k)
    assert not np.array_equal(backbone["blocks.0.attn.qkv.weight"], epoch_1["blocks.0.attn.qkv.weight"])


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's report
@pytest.mark.parametrize("events", [3, 12])  # TensorBoard's disk fills at its hparams, or in the run
def test_logs_and_pictures_the_disk_refuses_are_warnings_and_the_run_goes_on(events, tmp_path, image_folder,
                                                                             fresh_accelerate, monkeypatch, capsys):
    """On the main process alone, a log record, a TensorBoard event or a picture that the disk refused
    raised, and the other processes waited at the next barrier; they only show the run, and a
    checkpoint that cannot be written is the sentence that stops it."""
    import builtins
    import errno
    import os

    import sslvit.train.loop as loop
    import sslvit.train.run_outputs as run_outputs

    real_columns = run_outputs.save_columns

    def limited(*args, **kwargs):  # the picture's real writer meets a file-size limit
        with _files_limited_to(1000):
            return real_columns(*args, **kwargs)

    class Filling:  # log.jsonl's disk fills after its third record
        def __init__(self, file):
            self.file, self.records = file, 0

        def write(self, text):
            self.records += 1
            if self.records > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(text)

        def flush(self):
            self.file.flush()

        def close(self):
            self.file.close()

    from tensorboard.summary.writer.record_writer import RecordWriter

    real_record = RecordWriter.write
    records = []

    def filling_events(self, data):  # TensorBoard's writer thread meets the full disk after ``events``
        records.append(data)
        if len(records) > events:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_record(self, data)

    monkeypatch.setattr(run_outputs, "save_columns", limited)
    monkeypatch.setattr(loop, "open", lambda path, mode="r": Filling(builtins.open(path, mode)), raising=False)
    monkeypatch.setattr(RecordWriter, "write", filling_events)
    run = _run(tmp_path / "run", image_folder)
    err = capsys.readouterr().err
    for name in ("log.jsonl", "tensorboard"):
        assert err.count(f"warning: '{run / name}' could not be written (No space left on device); the run goes "
                         "on, and a checkpoint that cannot be written stops it.") == 1, err
    assert "Traceback" not in err and "Exception in thread" not in err  # the writer thread's own report kept quiet
    assert err.count(f"warning: the pictures could not be written into '{run}' (File too large); the run goes on.") == 2
    assert len((run / "log.jsonl").read_text().splitlines()) == 3 and not list(run.glob("pictures_epoch*.png"))
    assert latest_checkpoint(run).name == "epoch_0002" and (run / "backbone.safetensors").is_file()


PEER_LOST = ("Another process of the run ended first, so this one cannot go on (%s); that process's own error "
             "line, or the launcher's report of its exit code, says why. Mend that")


@pytest.mark.parametrize("raised, said", [
    (RuntimeError("DataLoader worker (pid 4321) is killed by signal: Killed. "),
     "A data-loading worker (pid 4321) was killed by signal Killed (most often the system's out-of-memory killer); "
     "lower --train.num_workers (each worker holds its own copy of the data pipeline)"),
    (RuntimeError("DataLoader worker (pid 4321) is killed by signal: Bus error. It is possible that dataloader's "
                  "workers are out of shared memory. Please try to raise your shared memory limit."),
     "A data-loading worker (pid 4321) was killed by signal Bus error (out of shared memory: give /dev/shm more"),
    (RuntimeError("DataLoader worker (pid(s) 4321, 4322) exited unexpectedly"),
     "A data-loading worker (pid 4321, 4322) exited unexpectedly; lower --train.num_workers"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
                            "of which 1.2 GiB is free.\nSee documentation for Memory Management"),
     "The accelerator ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
     "of 79.10 GiB of which 1.2 GiB is free.); lower --train.batch_size or set --model.grad_checkpointing true"),
    (RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                  "[127.0.0.1]:3220. This is typically caused by a remote worker crashing."), PEER_LOST % "Connection "
     "closed by peer"),
    (torch.distributed.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:3356, remote process exited or there was "
                                        "a network error, NCCL version 2.21.5"), PEER_LOST % "remote process exited"),
])
def test_memory_a_data_loading_worker_or_another_process_the_run_lost_ends_the_run_with_a_sentence(
        raised, said, tmp_path, image_folder, fresh_accelerate, monkeypatch, capsys):
    """torch raises these from wherever the step was (a worker's death through its SIGCHLD handler, a
    dead peer through the next collective), so a worker the out-of-memory killer took, a batch too
    large for the GPU, or another process's death ended the run in a traceback through the
    optimizer's or the model's code."""
    import sys

    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train import entry
    from tests.test_end_to_end import TINY

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr(mae.MAE, "forward", fails)
    monkeypatch.setattr(sys, "argv", ["mae.py", *TINY, "--data", str(image_folder), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        entry.main(MAERunConfig, "mae")
    err = capsys.readouterr().err.splitlines()[-1]
    assert e.value.code == 2 and err.startswith(f"error: {said}") and err.endswith(
        " and run again with --resume, which continues from the latest checkpoint if one was written.")
    monkeypatch.setattr(mae.MAE, "forward", lambda self, imgs: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other RuntimeError is a bug: its traceback stays
        entry.main(MAERunConfig, "mae")


def test_a_probe_out_of_accelerator_memory_is_a_sentence_naming_its_batch_size(monkeypatch, capsys):
    import dataclasses

    from sslvit.eval import cli

    def out_of_memory(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB.")

    monkeypatch.setattr("sys.argv", ["probe"])
    with pytest.raises(SystemExit) as e:
        cli.main(dataclasses.make_dataclass("NoKeys", []), out_of_memory, str)
    assert e.value.code == 2 and capsys.readouterr().err == (
        "error: The accelerator ran out of memory (CUDA out of memory. Tried to allocate 512.00 MiB.); lower "
        "--batch_size and run the probe again.\n")
