"""A real (tiny) MAE run through the entry point: artifacts, resume, probe."""
import json
import shutil
import math

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import run_pretraining

TINY = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2",
        "--model.patch_size", "4", "--model.img_size", "16",
        "--mae.decoder_dim", "32", "--mae.decoder_depth", "1", "--mae.decoder_heads", "2",
        "--train.batch_size", "16", "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0",
        "--train.log_every", "1", "--train.save_every", "1", "--train.picture_every", "1", "--train.blr", "1e-2"]


def _run(out, data, extra=()):
    return run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(data), "--out", str(out), *extra])


def test_two_epoch_run_writes_every_artifact(tmp_path, image_folder, fresh_accelerate):
    run = _run(tmp_path / "run", image_folder)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "log.jsonl", "backbone.safetensors", "backbone.json", "checkpoints", "tensorboard",
            "pictures_epoch0001.png", "pictures_epoch0002.png", "curves.png", "report.html"} <= names
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    epochs = [r for r in lines if "epoch_loss" in r]
    assert len(steps) == 6 and len(epochs) == 2
    assert all(k in steps[0] for k in ("loss", "lr", "images_per_s", "epoch", "step"))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["epoch_0001", "epoch_0002"]
    state = load_file(str(run / "checkpoints" / "epoch_0002" / "model.safetensors"))
    assert any(k.startswith("decoder.") for k in state)  # the checkpoint keeps the decoder
    backbone = load_file(str(run / "backbone.safetensors"))
    assert "pos_embed" in backbone and not any(k.startswith("decoder") for k in backbone)
    assert any(list(run.glob("tensorboard/**/events.out.tfevents*")))
    with pytest.raises(FileExistsError, match="--resume"):  # never silently overwrite a run
        _run(tmp_path / "run", image_folder)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_schedule_after_warmup(tmp_path, image_folder, fresh_accelerate, schedule):
    run = _run(tmp_path / schedule, image_folder, ["--train.lr_schedule", schedule, "--train.min_lr", "1e-5"])
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in lines if "loss" in r]  # steps 1-6 of 6, warmup over the first 3
    peak = 1e-2 * 16 / 256
    assert lrs[:3] == pytest.approx([0.0, peak / 3, 2 * peak / 3])
    if schedule == "constant":  # held at the peak to the end
        assert lrs[3:] == pytest.approx([peak] * 3)
    else:  # half a cosine from the peak towards min_lr (reached after the last step)
        assert lrs[3:] == pytest.approx([1e-5 + (peak - 1e-5) * 0.5 * (1 + math.cos(math.pi * k / 3))
                                         for k in range(3)])
    with pytest.raises(ValueError, match="train.lr_schedule 'linear' is unknown"):
        _run(tmp_path / "bad", image_folder, ["--train.lr_schedule", "linear"])


def test_resumed_run_reaches_the_same_weights(tmp_path, image_folder, fresh_accelerate):
    straight = _run(tmp_path / "straight", image_folder)
    fresh_accelerate()
    _run(tmp_path / "resumed", image_folder, ["--train.stop_after", "1"])
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["epoch_0001"]
    fresh_accelerate()
    _run(tmp_path / "resumed", image_folder, ["--resume"])
    a = load_file(str(straight / "backbone.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "backbone.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    # the same run without resume differs after two epochs from one after one: the check has teeth
    one = load_file(str(tmp_path / "resumed" / "checkpoints" / "epoch_0001" / "model.safetensors"))
    assert not np.allclose(one["backbone.blocks.0.attn.qkv.weight"].numpy(), a["blocks.0.attn.qkv.weight"].numpy())



def test_online_knn_is_logged_at_the_requested_interval(tmp_path, image_folder, fresh_accelerate):
    # drop-path draws from torch's global RNG: a monitor that drew from it (a DataLoader's base seed)
    # would change what follows
    run = _run(tmp_path / "run", image_folder, ["--train.epochs", "3", "--train.knn_every", "2",
                                                "--train.knn_k", "5", "--model.drop_path_rate", "0.1"])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    knn = [r for r in records if "knn_top1" in r]
    assert [r["epoch"] for r in knn] == [2, 3]  # every 2 epochs, and the last one
    assert all(0 <= r["knn_top1"] <= 100 and r["knn_top1"] <= r["knn_top5"] for r in knn)
    # the monitor only reads: a run without it ends on the same weights
    # (the presets choose knn_every for its cost alone)
    fresh_accelerate()
    quiet = _run(tmp_path / "quiet", image_folder, ["--train.epochs", "3", "--train.knn_every", "0",
                                                    "--model.drop_path_rate", "0.1"])
    a, b = load_file(str(run / "backbone.safetensors")), load_file(str(quiet / "backbone.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


def test_online_knn_on_unlabelled_or_one_class_data_is_one_clear_error(tmp_path, fresh_accelerate):
    from sslvit.data.folder import DataError

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(20):
        Image.fromarray(np.full((16, 16, 3), i * 10, np.uint8)).save(flat / f"{i}.png")
    with pytest.raises(DataError, match="train.knn_every needs labels"):
        _run(tmp_path / "run", flat, ["--train.knn_every", "1"])
    one = tmp_path / "one"
    shutil.copytree(flat, one / "all")  # one sub-folder: one class, which every image would be scored right in
    with pytest.raises(DataError, match=r"train.knn_every needs at least two classes, and '.*one' has one"):
        _run(tmp_path / "run1", one, ["--train.knn_every", "1"])
