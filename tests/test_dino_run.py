"""A real (tiny) DINO run through the entry point: artifacts, teacher export, probes, NaN stop."""
import json

import pytest
import torch
from safetensors.torch import load_file

from sslvit.eval.attention_probe import AttentionConfig, run_attention
from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe
from sslvit.objectives.dino import DINO
from sslvit.recipes.dino import DINORunConfig
from sslvit.train.checkpoint import latest_checkpoint
from sslvit.train.entry import run_pretraining
from sslvit.train.loop import TrainingDiverged

TINY = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2",
        "--model.patch_size", "4", "--model.img_size", "16",
        "--crops.local_number", "2", "--crops.local_size", "8", "--crops.blur_sigma", "[0.1, 0.5]",
        "--dino.out_dim", "128", "--dino.hidden_dim", "64", "--dino.bottleneck_dim", "32",
        "--train.batch_size", "16", "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0",
        "--train.log_every", "1", "--train.save_every", "1", "--train.picture_every", "2",
        "--start", "none"]  # a folder's recipe trains an MAE start first (tests/test_start.py); not here


def _run(out, data, extra=(), stop=None):
    return run_pretraining(DINORunConfig, "dino", argv=[*TINY, "--data", str(data), "--out", str(out), *extra],
                           stop=stop)


def test_dino_run_writes_checkpoint_teacher_backbone_attention_and_is_probed(tmp_path, image_folder,
                                                                           fresh_accelerate):
    run = _run(tmp_path / "run", image_folder)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "log.jsonl", "backbone.safetensors", "backbone.json", "checkpoints",
            "pictures_epoch0002.png"} <= names
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert len(steps) == 6  # 48 training images / 16 = 3 steps x 2 epochs
    assert all({"teacher_entropy", "kl", "teacher_temp"} <= r.keys() for r in steps)
    # the exported backbone is the teacher's, as DINO evaluates it
    state = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    backbone = load_file(str(run / "backbone.safetensors"))
    for k, v in backbone.items():
        torch.testing.assert_close(v, state[f"teacher.module.backbone.{k}"], msg=k)
    assert not torch.equal(backbone["blocks.0.attn.qkv.weight"], state["student.backbone.blocks.0.attn.qkv.weight"])
    report = run_knn_probe(KNNProbeConfig(ckpt=str(run), ks=(5, 10)))
    assert set(report["results"]) == {"pretrained", "random_init", "raw_pixels"}
    assert 0 <= report["results"]["pretrained"][10]["top1"] <= 100
    assert (run / "knn.json").is_file() and (run / "knn_neighbours.png").is_file()
    assert {"recall@1", "recall@5", "recall@10", "mAP"} <= report["retrieval"]["pretrained"].keys()
    att = run_attention(AttentionConfig(ckpt=str(run), img_size=24))  # another resolution than training
    assert att["grid"] == [6, 6] and att["heads"] == 3 and (run / "attention.png").is_file()


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, image_folder,
                                                                              fresh_accelerate, monkeypatch):
    forward = DINO.forward
    calls = {"n": 0}

    def poisoned(self, groups):
        calls["n"] += 1
        out = forward(self, groups)
        if calls["n"] >= 5:  # from the second step of epoch 2 on
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DINO, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row, up to step 6 \(epoch 2\).*epoch_0001.*intact"):
        _run(tmp_path / "run", image_folder, ["--train.max_bad_steps", "2"])
    assert latest_checkpoint(tmp_path / "run").name == "epoch_0001"
    assert load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))


def test_dinov2_options_train_resume_mid_epoch_exactly_export_to_timm_and_are_probed(tmp_path, image_folder,
                                                                                     fresh_accelerate):
    """KoLeo, Sinkhorn-Knopp centring and register tokens together, through the whole path."""
    from sslvit.train.stop_signals import RunStopped
    from tests.run_checks import assert_same_backbone, assert_timm_loads_and_is_probed
    from tests.test_shards import _StopAtCall

    extra = ["--dino.koleo_weight", "0.1", "--dino.centering", "sinkhorn", "--model.reg_tokens", "2"]
    straight = _run(tmp_path / "straight", image_folder, extra)
    steps = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines() if '"koleo"' in x]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    fresh_accelerate()
    with pytest.raises(RunStopped):
        _run(tmp_path / "resumed", image_folder, extra, stop=_StopAtCall(6))
    fresh_accelerate()
    resumed = _run(tmp_path / "resumed", image_folder, [*extra, "--resume"])
    assert_same_backbone(straight, resumed)
    assert_timm_loads_and_is_probed(straight)
