"""What a tiny real run leaves for a person: one TensorBoard entry with its hparams once and no
step/epoch curves, the parameter counts in the first lines, each epoch's seconds and the time
left, the training time at the end, and files colleagues can read (the
umask's modes, not safetensors' 0600)."""
import contextlib
import datetime
import io
import json
import os
import re
import stat

import numpy as np
import pytest
from PIL import Image

from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import run_pretraining

TINY = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2", "--model.patch_size", "4",
        "--model.img_size", "16", "--mae.decoder_dim", "32", "--mae.decoder_depth", "1", "--mae.decoder_heads", "2",
        "--train.batch_size", "16", "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0",
        "--train.log_every", "1"]
UMASK = 0o027  # not the usual 022: the modes must come from the umask, not be a fixed 0644


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """-> (run dir, what the run printed): 2 epochs of a tiny MAE on 48 random images, under UMASK."""
    root = tmp_path_factory.mktemp("readable")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(20):
            Image.fromarray((rng.random((16, 16, 3)) * 80 + c * 80).astype(np.uint8)).save(
                root / "imgs" / f"class{c}" / f"{i}.png")
    _reset_accelerate()
    old, out = os.umask(UMASK), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            run = run_pretraining(MAERunConfig, "mae",
                                  argv=[*TINY, "--data", str(root / "imgs"), "--out", str(root / "run")])
    finally:
        os.umask(old)
        _reset_accelerate()
    return run, out.getvalue()


def test_tensorboard_has_one_entry_with_hparams_once_and_no_axis_curves(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run, _ = tiny_run
    event_dirs = {p.parent for p in (run / "tensorboard").rglob("events.out.tfevents*")}
    assert event_dirs == {run / "tensorboard"} and not [p for p in (run / "tensorboard").iterdir() if p.is_dir()]
    (events,) = (run / "tensorboard").glob("events.out.tfevents*")
    plugin_tags = [v.tag for e in EventFileLoader(str(events)).Load() for v in e.summary.value
                   if v.metadata.plugin_data.plugin_name == "hparams"]
    assert sorted(plugin_tags) == ["_hparams_/experiment", "_hparams_/session_end_info",
                                   "_hparams_/session_start_info"]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "epoch_loss", "images_per_s"} <= scalars
    assert not scalars & {"step", "epoch"}
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5, 6]


def test_first_lines_give_the_parameter_counts_of_encoder_and_decoder(tiny_run):
    from safetensors.torch import load_file

    run, printed = tiny_run
    lines = printed.splitlines()
    counts = next(line for line in lines[:3] if line.startswith("Parameters:"))
    encoder = sum(t.numel() for t in load_file(str(run / "backbone.safetensors")).values())
    state = load_file(str(run / "checkpoints" / "epoch_0002" / "model.safetensors"))
    decoder = sum(t.numel() for k, t in state.items() if k.startswith("decoder."))
    assert counts == f"Parameters: encoder {encoder / 1e6:.2f} M, decoder {decoder / 1e6:.2f} M"


def test_run_outputs_get_the_umasks_modes(tiny_run):
    run, _ = tiny_run
    files = [p for p in run.rglob("*") if p.is_file()]
    assert run / "backbone.safetensors" in files and run / "checkpoints/epoch_0002/model.safetensors" in files
    wrong = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [run, *run.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~UMASK}
    assert wrong == {}


@pytest.mark.parametrize("umask, file_mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writers_honour_the_umask(tmp_path, umask, file_mode):
    import torch

    from sslvit.files import honour_umask, save_safetensors_atomic, write_json_atomic

    old = os.umask(umask)
    try:
        save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        write_json_atomic({"a": 1}, tmp_path / "a.json")
        (tmp_path / "d" / "e").mkdir(parents=True)
        os.chmod(tmp_path / "d" / "e", 0o700)
        (tmp_path / "d" / "e" / "f").write_text("x")
        os.chmod(tmp_path / "d" / "e" / "f", 0o600)
        honour_umask(tmp_path / "d")
    finally:
        os.umask(old)
    for name in ("w.safetensors", "a.json", "d/e/f"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "d" / "e").stat().st_mode) == 0o777 & ~umask


def test_two_writers_of_one_file_at_once_each_rename_a_whole_file(tmp_path):
    """Two runs building the same data cache at once: the second writer's rename must not take
    the first one's temporary file from under it (each has its own); the last rename wins."""
    import numpy as np

    from sslvit.files import atomic_path

    path = tmp_path / "cache.npz"
    with atomic_path(path) as first:
        np.savez(first, x=np.zeros(3))
        with atomic_path(path) as second:
            np.savez(second, x=np.ones(3))
        assert np.load(path)["x"].tolist() == [1, 1, 1]
    assert np.load(path)["x"].tolist() == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]  # no temporary file left behind


def test_epoch_lines_give_the_epochs_seconds_and_the_time_left_and_the_end_the_training_time(tiny_run):
    run, printed = tiny_run
    (first,) = [line for line in printed.splitlines() if line.startswith("epoch 1/2  loss")]
    (last,) = [line for line in printed.splitlines() if line.startswith("epoch 2/2  loss")]
    m = re.fullmatch(r"epoch 1/2  loss [\d.]+  \d+ img/s  (\d+) s, about (\d+):(\d\d):(\d\d) left", first)
    assert m, first
    seconds, h, mi, s = map(int, m.groups())
    assert 3600 * h + 60 * mi + s >= seconds  # one epoch to go, at least as long as the first took
    assert re.fullmatch(r"epoch 2/2  loss [\d.]+  \d+ img/s  \d+ s", last), last
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (total,) = [r["training_time_s"] for r in records if "training_time_s" in r]
    assert total >= sum(r["epoch_time_s"] for r in records if "epoch_time_s" in r)
    assert f"Training time {datetime.timedelta(seconds=round(total))}" in printed.splitlines()


@pytest.mark.parametrize("start_epoch, now_epoch, last_epoch, elapsed, expected", [
    (0, 1, 9, 100.0, ", about 0:06:40 left"),  # 2 epochs in 100 s, 8 to go
    (5, 6, 9, 60.0, ", about 0:01:30 left"),  # resumed at epoch 5: only this session's 2 epochs count
    (5.5, 6, 9, 60.0, ", about 0:02:00 left"),  # resumed half-way through epoch 5: 1.5 epochs in 60 s
    (0, 9, 9, 500.0, ""),  # the last epoch
])
def test_time_left_is_this_sessions_seconds_an_epoch_times_the_epochs_to_go(
        monkeypatch, start_epoch, now_epoch, last_epoch, elapsed, expected):
    from sslvit.train import loop

    trainer = object.__new__(loop.Trainer)
    trainer.start_epoch, trainer.last_epoch, trainer.p = start_epoch, last_epoch, loop.Progress(epoch=now_epoch)
    trainer.run_t0 = 1000.0
    monkeypatch.setattr(loop.time, "perf_counter", lambda: 1000.0 + elapsed)
    assert trainer._time_left(is_last=now_epoch == last_epoch) == expected


@pytest.mark.parametrize("epoch, batches_done, start", [(0, 0, 0.0), (5, 0, 5.0), (5, 7, 5.5)])
def test_a_session_starts_where_the_checkpoint_left_off_part_epochs_included(epoch, batches_done, start):
    from sslvit.train.loop import Progress, session_start

    assert session_start(Progress(epoch=epoch, batches_done=batches_done), batches_per_epoch=14) == start
