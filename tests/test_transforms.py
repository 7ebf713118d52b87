"""ToNormalizedTensor against the torchvision v2 transforms it stands in for."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedTensor, eval_transform, mae_train_transform

V2_CHAIN = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _inputs():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    return {
        "PIL RGB": Image.fromarray(rgb),
        "PIL L": Image.fromarray(rgb[..., 0]),
        "PIL RGBA": Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)),
        "uint8 tensor": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        "PIL I;16": Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16)),
        "float tensor": torch.rand(3, 6, 5),
    }


@pytest.mark.parametrize("name", list(_inputs()))
def test_the_same_bits_as_torchvisions_to_image_to_dtype_normalize(name):
    img = _inputs()[name]
    if name == "PIL RGBA":  # 4 channels against a 3-channel mean: both refuse it
        for transform in (ToNormalizedTensor(), V2_CHAIN):
            with pytest.raises(RuntimeError):
                transform(img)
        return
    ours, ref = ToNormalizedTensor()(img), V2_CHAIN(img)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert torch.equal(ours, ref)


def test_the_train_and_eval_transforms_give_what_the_v2_chain_gave():
    img = _inputs()["PIL RGB"]
    for ours in (mae_train_transform(16, hflip=True), eval_transform(16)):
        ref = v2.Compose([*ours.transforms[:-1], *V2_CHAIN.transforms])
        torch.manual_seed(3)
        a = ours(img)
        torch.manual_seed(3)
        b = ref(img)
        assert torch.equal(a, b)


@pytest.mark.parametrize("script", ["mae", "beit", "mae_dino"])
def test_crop_scale_key_sets_the_one_view_recipes_random_resized_crop(script):
    import importlib

    from sslvit.train import entry

    cls = {"mae": "MAERunConfig", "beit": "BEiTRunConfig", "mae_dino": "MAEDINORunConfig"}[script]
    config_cls = getattr(importlib.import_module(f"sslvit.recipes.{script}"), cls)
    for argv, scale in ([], (0.2, 1.0)), (["--train.crop_scale", "0.5,0.9"], (0.5, 0.9)):
        cfg = entry.run_config(config_cls, script, argv=["--data", "cluttered", "--out", "unused", *argv])
        transform = cfg.train_transform()
        transform = transform.transforms["mae"] if script == "mae_dino" else transform  # the composite's MAE view
        crops = [t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop)]
        assert len(crops) == 1 and tuple(crops[0].scale) == scale, (script, argv)
    bad = entry.run_config(config_cls, script, argv=["--data", "cluttered", "--out", "unused",
                                                      "--train.crop_scale", "0,1"])
    with pytest.raises(ValueError, match="train.crop_scale must be"):
        bad.train.validate()  # what run_pretraining validates for every recipe
