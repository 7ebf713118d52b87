"""The left-right flip of every augmentation: off by default for the embedded digit sets (a
mirrored 2 reads as a 5), on for anything else, and ``train.hflip`` / ``--hflip`` decide when given."""
import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.data.batched_multicrop import FLIP, MultiCropDraw
from sslvit.data.multicrop import MultiCropConfig, MultiCropTransform
from sslvit.data.transforms import hflip_for, mae_train_transform


def _half_lit(size: int = 32) -> Image.Image:
    """Left half white, right half black: a flip turns it into its own negative."""
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[:, : size // 2] = 255
    return Image.fromarray(a)


def _flips_seen(transform, draws: int = 24) -> int:
    """How many of ``draws`` outputs of ``transform`` on the half-lit image have their light side right."""
    img, seen = _half_lit(), 0
    torch.manual_seed(0)
    for _ in range(draws):
        out = transform(img)
        out = out[0] if isinstance(out, list) else out
        w = out.shape[-1]
        seen += int(out[..., : w // 2].mean() < out[..., w // 2:].mean())
    return seen


@pytest.mark.parametrize("data, expected", [("digits", False), ("cluttered", False),
                                            ("cluttered:seed=1,strength=1.5", False), ("/some/folder", True),
                                            ("shards/train-{000..009}.tar", True)])
def test_the_default_follows_the_data(data, expected):
    assert hflip_for(data) is expected
    assert hflip_for(data, True) is True and hflip_for(data, False) is False  # a key given always wins


@pytest.mark.parametrize("hflip", [True, False])
def test_mae_transform_flips_only_when_asked(hflip):
    # full-image crops (scale 1, ratio 1): only the flip can move the light side
    t = mae_train_transform(32, scale=(1.0, 1.0), hflip=hflip)
    t.transforms[0].ratio = (1.0, 1.0)
    seen = _flips_seen(t)
    assert (seen > 0) if hflip else (seen == 0)


@pytest.mark.parametrize("hflip", [True, False])
def test_every_multicrop_view_flips_only_when_asked(hflip):
    cfg = MultiCropConfig(global_scale=(1.0, 1.0), local_number=1, local_size=16, local_scale=(1.0, 1.0),
                          color_jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0)
    crops = MultiCropTransform(32, cfg, hflip)
    for view in (crops.global1, crops.global2, crops.local):
        view.transforms[1].ratio = (1.0, 1.0)
        view.transforms = [t for t in view.transforms if "Solarize" not in type(t).__name__]
        seen = _flips_seen(view)
        assert (seen > 0) if hflip else (seen == 0)


def _flips(transform) -> bool:
    """Whether a recipe's training transform flips: a v2 chain holds the flip; the batched
    multi-crop's draw (crops.batched) sets its views' flip column, seen over 20 draws."""
    if isinstance(transform, MultiCropDraw):
        return bool(torch.stack([transform.draw(32, 32)[:, FLIP] for _ in range(20)]).any())
    return "RandomHorizontalFlip" in repr(transform.global1 if isinstance(transform, MultiCropTransform) else transform)


@pytest.mark.parametrize("script", ["mae", "beit", "dino", "mae_dino"])
def test_each_recipe_leaves_digits_unflipped_and_says_so(script, capsys):
    import importlib

    from sslvit.train import entry
    from sslvit.train.data_recipe import summary

    cls = {"mae": "MAERunConfig", "beit": "BEiTRunConfig", "dino": "DINORunConfig", "mae_dino": "MAEDINORunConfig"}
    config_cls = getattr(importlib.import_module(f"sslvit.recipes.{script}"), cls[script])
    for argv, flips in ([], False), (["--train.hflip", "true"], True):
        cfg = entry.run_config(config_cls, script, argv=["--data", "cluttered", "--out", "unused", *argv])
        transform = cfg.train_transform()
        parts = transform.transforms.values() if hasattr(transform, "transforms") and \
            isinstance(transform.transforms, dict) else [transform]
        assert all(_flips(p) is flips for p in parts), (script, argv)
        assert ("no left-right flips" in summary(cfg)) is not flips


def test_resuming_a_run_from_before_the_key_keeps_flipping(tmp_path):
    import yaml

    from sslvit.config import save_yaml
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train import entry

    cfg = entry.run_config(MAERunConfig, "mae", argv=["--data", "cluttered", "--out", str(tmp_path)])
    assert cfg.train.hflip is None and not hflip_for(cfg.data, cfg.train.hflip)
    save_yaml(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["train"]["hflip"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = entry.run_config(MAERunConfig, "mae", argv=["--out", str(tmp_path), "--resume"])
    assert hflip_for(resumed.data, resumed.train.hflip)


def test_finetune_augmentation_follows_the_data_and_the_key(tmp_path):
    from sslvit.eval.finetune import FinetuneConfig, _labelled_sets
    from sslvit.models.backbone_config import BackboneConfig
    from sslvit.models.export import export_backbone
    from sslvit.models.vit import build_backbone

    bcfg = BackboneConfig(size="tiny", patch_size=8, img_size=32)
    export_backbone(build_backbone(bcfg), bcfg, tmp_path)
    for hflip, flips in (None, False), (True, True):
        cfg = FinetuneConfig(ckpt=str(tmp_path), data="cluttered", augment="rrc", hflip=hflip)
        _, train_set, _, _ = _labelled_sets(cfg, tmp_path / "backbone.safetensors")
        assert ("RandomHorizontalFlip" in repr(train_set.transform)) is flips


def test_linear_probe_cache_tells_flipped_passes_apart():
    from sslvit.eval.feature_cache import feature_key

    plain = feature_key("avg", 4, "cluttered", "train", 32)
    assert feature_key("avg", 4, "cluttered", "train", 32, aug_hflip=False) == plain  # no aug pass: no flip to key
    flipped = feature_key("avg", 4, "cluttered", "train", 32, aug_pass=0, aug_seed=0)
    unflipped = feature_key("avg", 4, "cluttered", "train", 32, aug_pass=0, aug_seed=0, aug_hflip=False)
    assert flipped != unflipped


def test_linear_probe_aug_passes_crop_at_the_scale_asked_and_cache_it_apart():
    from sslvit.eval.feature_cache import feature_key
    from sslvit.eval.linear_probe import LinearProbeConfig

    default = feature_key("avg", 4, "cluttered", "train", 32, aug_pass=0, aug_seed=0)
    assert feature_key("avg", 4, "cluttered", "train", 32, aug_pass=0, aug_seed=0,
                       aug_crop_scale=(0.08, 1.0)) == default  # caches written before stay valid
    assert feature_key("avg", 4, "cluttered", "train", 32, aug_pass=0, aug_seed=0,
                       aug_crop_scale=(0.5, 1.0)) != default
    for bad in ((0.0, 1.0), (0.6, 0.5), (0.5, 1.2)):
        with pytest.raises(ValueError, match="crop_scale"):
            LinearProbeConfig(crop_scale=bad).validate()
