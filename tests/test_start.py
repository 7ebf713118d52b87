"""``start``: a run that trains another objective's run first and starts from its backbone, in one
command, is the same as the two commands a user would type; it resumes, reuses and refuses as a
run does, and a run that fails after it keeps it."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslvit.config import ConfigError
from sslvit.data.shape import DataShape
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.ibot import IBOTRunConfig
from sslvit.recipes.mae import MAERunConfig
from sslvit.recipes.start_run import check_start
from sslvit.train.data_recipe import fitted_small_recipe
from sslvit.train.entry import load_presets, run_config, run_pretraining
from sslvit.train.start_spec import parse_start, scaled_start

# the backbone both stages share, and how the data is read, as a user would pin them on both commands
SHAPE = ["--model.size", "tiny", "--model.depth", "2", "--model.patch_size", "4", "--model.img_size", "16",
         "--train.precision", "fp32", "--train.num_workers", "0"]
DINO_KEYS = ["--crops.local_number", "2", "--crops.local_size", "8", "--dino.out_dim", "128",
             "--dino.hidden_dim", "64", "--dino.bottleneck_dim", "32", "--train.batch_size", "16",
             "--train.epochs", "1", "--train.knn_every", "0"]


def _dino(data, out, *extra, stop=None):
    return run_pretraining(DINORunConfig, "dino", argv=[*SHAPE, *DINO_KEYS, "--data", str(data), "--out", str(out),
                                                        *extra], stop=stop)


def _mae(data, out, *extra):
    """MAE's run as a user types it before ``--init``: its own recipe, the shared backbone keys."""
    return run_pretraining(MAERunConfig, "mae", argv=[*SHAPE, "--data", str(data), "--out", str(out),
                                                      "--train.epochs", "2", *extra])


def _weights(path):
    return load_file(str(path / "backbone.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_start_spec_reads_objective_and_epochs_and_names_a_bad_one():
    assert parse_start("mae:33") == ("mae", 33) and parse_start("mae") == ("mae", None)
    assert parse_start(None) is None and parse_start("none") is None and parse_start("None") is None
    assert scaled_start("mae:33", 4.0) == "mae:132" and scaled_start("mae", 4.0) == "mae"
    for bad in ("mae:0", "mae:x", "mae:33:1", "MAE 33"):
        with pytest.raises(ValueError, match=r"OBJECTIVE:EPOCHS; .* \(random weights\)\.$"):
            parse_start(bad)
    for weights in ("runs/mae-mine", str(Path(__file__))):  # a run or a file: pointed at --init
        with pytest.raises(ValueError, match=rf"\(random weights\); to start from the weights at '{weights}', pass "
                                             r"--init with it\.$"):
            parse_start(weights)
    with pytest.raises(ValueError, match="'dino', which cannot start a run; use mae"):
        check_start("dino:5")
    with pytest.raises(ValueError, match="start 'beit' names"):  # through the config, as a user meets it
        run_config(DINORunConfig, "dino", ["--start", "beit"]).validate()


def test_small_data_recipes_of_dino_and_ibot_start_from_mae_and_a_folder_scales_its_epochs():
    for cls, preset in ((DINORunConfig, "dino"), (IBOTRunConfig, "ibot")):
        cfg = run_config(cls, preset, ["--data", "cluttered", "--out", "o"])
        start = cfg.start_run()
        assert cfg.start == "mae:33" and start.config_cls is MAERunConfig and str(start.out) == "o/start-mae33"
        assert "--train.epochs=33" in start.argv and "--model.init_values=0.1" in start.argv
        assert run_config(cls, preset, ["--data", "cluttered", "--start", "none"]).start_run() is None
        assert run_config(cls, preset, ["--data", "cluttered", "--init", "w.safetensors"]).start_run() is None
        # the reference (ImageNet) recipe trains from random weights, as the papers do
        assert run_config(cls, preset, ["--data", "/nonexistent/folder"]).start_run() is None
    fitted = fitted_small_recipe(load_presets("dino")["cluttered"], DataShape(count=1125, side=32, labelled=False))
    assert fitted["start"] == "mae:132" and int(fitted["train"]["epochs"]) == 60  # 4500 / 1125 = 4x, both


def test_one_command_equals_mae_then_init_and_a_finished_start_is_reused(tmp_path, image_folder, fresh_accelerate):
    run = _dino(image_folder, tmp_path / "one", "--start", "mae:2")
    start = run / "start-mae2"
    assert json.loads((start / "log.jsonl").read_text().splitlines()[-1])["training_time_s"] > 0
    fresh_accelerate()
    mae = _mae(image_folder, tmp_path / "mae")
    fresh_accelerate()
    two = _dino(image_folder, tmp_path / "two", "--init", str(mae / "backbone.safetensors"))
    assert _same(_weights(start), _weights(mae))
    assert _same(_weights(run), _weights(two))
    assert not _same(_weights(run), _weights(mae))  # DINO trained on from the start
    # the run failed after its start (here: removed), and runs again: the finished start is not retrained
    for p in run.iterdir():
        if p.name != "start-mae2":
            p.unlink() if p.is_file() else shutil.rmtree(p)
    log_before = (start / "log.jsonl").read_text()
    fresh_accelerate()
    again = _dino(image_folder, tmp_path / "one", "--start", "mae:2")
    assert (start / "log.jsonl").read_text() == log_before
    assert _same(_weights(again), _weights(two))


def test_a_finished_start_of_other_keys_is_refused_not_reused(tmp_path, image_folder, fresh_accelerate):
    _mae(image_folder, tmp_path / "run" / "start-mae2", "--train.seed", "1")
    fresh_accelerate()
    with pytest.raises(ConfigError, match=r"start-mae2' holds a finished start of other keys \(train.seed: 1 there, "
                                          r"0 now\); remove it"):
        _dino(image_folder, tmp_path / "run", "--start", "mae:2")


def test_an_interrupted_start_needs_resume_and_continues_exactly(tmp_path, image_folder, fresh_accelerate):
    out = tmp_path / "run"
    # the start stopped after its first epoch, as Ctrl-C would leave it
    _mae(image_folder, out / "start-mae2", "--train.stop_after", "1")
    fresh_accelerate()
    with pytest.raises(FileExistsError, match="start-mae2' already holds checkpoints; pass --resume"):
        _dino(image_folder, out, "--start", "mae:2")
    fresh_accelerate()
    _dino(image_folder, out, "--start", "mae:2", "--resume")
    fresh_accelerate()
    whole = _mae(image_folder, tmp_path / "whole")
    assert _same(_weights(out / "start-mae2"), _weights(whole))
    assert (out / "backbone.safetensors").is_file()


def test_a_run_that_fails_after_its_start_keeps_the_start_and_removes_the_rest(tmp_path, image_folder,
                                                                              fresh_accelerate):
    out = tmp_path / "run"
    # 48 training images cannot make one DINO batch of 64: refused after the start, before DINO's first step
    with pytest.raises(ValueError, match="fewer than one batch"):
        _dino(image_folder, out, "--start", "mae:2", "--train.batch_size", "64")
    assert sorted(p.name for p in out.iterdir()) == ["start-mae2"]
    assert (out / "start-mae2" / "backbone.safetensors").is_file()


def test_release_lets_the_next_run_in_the_process_pick_another_precision(fresh_accelerate):
    from accelerate import Accelerator

    from sslvit.runtime.devices import release_accelerator

    Accelerator(cpu=True, mixed_precision="no")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(cpu=True, mixed_precision="bf16")
    release_accelerator()
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
