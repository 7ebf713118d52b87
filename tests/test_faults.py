"""Faults: non-finite steps are skipped and bound, checkpoints survive failed writes and kills."""
import json

import pytest
import torch

import sslvit.objectives.mae as mae
from sslvit.train.checkpoint import latest_checkpoint
from sslvit.train.loop import TrainingDiverged
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


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one_latest(tmp_path, image_folder,
                                                                            fresh_accelerate, monkeypatch):
    import errno
    from pathlib import Path

    from accelerate import Accelerator

    from sslvit.train.checkpoint import CheckpointError

    real = Accelerator.save_state
    calls = []

    def fails_second_time(self, output_dir, **kw):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", fails_second_time)
    with pytest.raises(CheckpointError, match="No space left on device.*epoch_0001"):
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
