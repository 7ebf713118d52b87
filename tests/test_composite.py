"""Composition: a composite of one objective trains exactly as that objective alone, and MAE +
DINO train one backbone in one step, each loss logged, resumable mid-epoch exactly."""
import json
from dataclasses import dataclass

import pytest
from safetensors.torch import load_file

from sslvit.data.collates import CompositeCollate
from sslvit.data.transforms import CompositeTransform
from sslvit.objectives.composite import Composite
from sslvit.recipes.mae import MAERunConfig
from sslvit.recipes.mae_dino import MAEDINORunConfig
from sslvit.train.entry import run_pretraining
from tests.run_checks import assert_same_backbone, assert_timm_loads_and_is_probed
from tests.test_end_to_end import TINY


@dataclass
class MAEAsComposite(MAERunConfig):
    """MAE's run with its objective, transform and collate each wrapped as a composite of one."""

    def build_objective(self):
        return Composite({"mae": super().build_objective()}, {"mae": 1.0}, export="mae")

    def train_transform(self):
        return CompositeTransform({"mae": super().train_transform()})

    def collate_fn(self):
        return CompositeCollate({"mae": None})


def _records(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_a_composite_of_one_trains_bit_for_bit_as_the_objective_alone(tmp_path, image_folder, fresh_accelerate):
    argv = [*TINY, "--data", str(image_folder)]
    alone = run_pretraining(MAERunConfig, "mae", argv=[*argv, "--out", str(tmp_path / "alone")])
    fresh_accelerate()
    wrapped = run_pretraining(MAEAsComposite, "mae", argv=[*argv, "--out", str(tmp_path / "wrapped")])
    la = [r["loss"] for r in _records(alone) if "loss" in r]
    lb = [r for r in _records(wrapped) if "loss" in r]
    assert la == [r["loss"] for r in lb] and len(la) == 6
    assert all(r["loss"] == r["mae.loss"] for r in lb)  # logged under the part's name too
    a, b = load_file(str(alone / "backbone.safetensors")), load_file(str(wrapped / "backbone.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


MAE_DINO = [*TINY, "--model.pos_embed", "learned", "--model.dynamic_img_size", "true",
            "--crops.local_number", "2", "--crops.local_size", "8", "--crops.blur_sigma", "[0.1, 0.5]",
            "--dino.out_dim", "128", "--dino.hidden_dim", "64", "--dino.bottleneck_dim", "32",
            "--weights.mae", "1.0", "--weights.dino", "0.5"]


def test_mae_and_dino_train_one_backbone_in_one_step_and_resume_mid_epoch(tmp_path, image_folder,
                                                                           fresh_accelerate, caplog):
    from sslvit.train.stop_signals import RunStopped
    from tests.test_shards import _StopAtCall

    argv = [*MAE_DINO, "--data", str(image_folder)]
    straight = run_pretraining(MAEDINORunConfig, "mae_dino", argv=[*argv, "--out", str(tmp_path / "straight")])
    steps = [r for r in _records(straight) if "loss" in r]
    assert len(steps) == 6
    for r in steps:  # log_every 1, no accumulation: the logged loss is this step's weighted sum
        assert abs(r["loss"] - (r["mae.loss"] + 0.5 * r["dino.loss"])) <= 1e-5 * abs(r["loss"])
        assert "dino.teacher_entropy" in r
    fresh_accelerate()
    with pytest.raises(RunStopped):
        run_pretraining(MAEDINORunConfig, "mae_dino", argv=[*argv, "--out", str(tmp_path / "resumed")],
                        stop=_StopAtCall(6))
    fresh_accelerate()
    resumed = run_pretraining(MAEDINORunConfig, "mae_dino", argv=[*argv, "--out", str(tmp_path / "resumed"),
                                                                  "--resume"])
    assert_same_backbone(straight, resumed)
    assert_timm_loads_and_is_probed(straight)
    # the shared backbone's aliases, dropped by safetensors and tied back on loading, are not listed at each save
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]


def test_the_parts_share_one_backbone_and_its_no_decay_names():
    from sslvit.config import build_config

    cfg = build_config(MAEDINORunConfig, ["--model.size", "tiny", "--model.depth", "1", "--model.img_size", "32",
                                          "--crops.local_size", "16", "--dino.out_dim", "64"])
    composite = cfg.build_objective()
    mae, dino = composite.parts["mae"], composite.parts["dino"]
    assert mae.backbone is dino.student.backbone and composite.exported_backbone() is dino.teacher.module.backbone
    names = dict(composite.named_parameters())
    assert "parts.mae.backbone.pos_embed" in composite.no_weight_decay() and "parts.mae.backbone.pos_embed" in names
    with pytest.raises(ValueError, match="both 0"):
        build_config(MAEDINORunConfig, ["--weights.mae", "0", "--weights.dino", "0"]).validate()
