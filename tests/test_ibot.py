"""iBOT: the patch loss against a float64 reference written from the paper (and bytedance/ibot's
iBOTLoss), masked places only, masks keyed by the image, and a real tiny run."""
import json

import numpy as np
import pytest
import torch

from sslvit.masking import keyed_crop_masks
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.base import StepInfo
from sslvit.objectives.dino import DINOConfig
from sslvit.objectives.ibot import IBOT, IBOTConfig, ibot_patch_loss
from sslvit.recipes.ibot import IBOTRunConfig
from sslvit.train.entry import run_pretraining


def _reference_patch_loss(student, teacher, masks, center, student_temp, teacher_temp) -> float:
    """float64, from the paper: for each global crop, the cross-entropy between the teacher's
    centred, sharpened softmax and the student's softmax at every patch, summed over the masked
    patches and divided by their count (at least 1); then the mean over the crops."""
    s, t, m = student.double(), teacher.double(), masks.double()
    t = torch.softmax((t - center.double()) / teacher_temp, dim=-1)
    ce = -(t * torch.log_softmax(s / student_temp, dim=-1)).sum(-1)  # (V, N)
    return float(((ce * m).sum(-1) / m.sum(-1).clamp(min=1)).mean())


def test_patch_loss_equals_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    V, N, K = 6, 16, 64
    student, teacher = torch.randn(V, N, K, generator=g) * 3, torch.randn(V, N, K, generator=g) * 3
    masks = torch.rand(V, N, generator=g) < 0.4
    masks[1] = False  # a crop with no masked patch counts 0, as in iBOT
    center = torch.randn(1, 1, K, generator=g) * 0.1
    got = float(ibot_patch_loss(student[masks], teacher[masks], masks, center, 0.1, 0.07))
    ref = _reference_patch_loss(student, teacher, masks, center, 0.1, 0.07)
    assert abs(got - ref) <= 1e-6 * abs(ref), (got, ref)


def _ibot(shared=True):
    torch.manual_seed(0)
    cfg = BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16, dynamic_img_size=True, pos_embed="learned")
    dcfg = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    icfg = IBOTConfig(shared_head=shared, patch_out_dim=48, mask_probability=1.0)
    return IBOT(build_backbone(cfg), build_backbone(cfg), dcfg, icfg).train()


def _info(step=0, rows=slice(0, 4)):
    return StepInfo(step=step, micro=0, epoch=1, total_steps=10, steps_per_epoch=5, key=7, rows=rows,
                    global_size=rows.stop)


def _groups(b=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2 * b, 3, 16, 16, generator=g), torch.randn(2 * b, 3, 8, 8, generator=g)]


@pytest.mark.parametrize("shared", [True, False])
def test_only_the_masked_patches_reach_the_patch_loss(shared):
    """Moving the student's output at an unmasked patch of a global crop leaves the patch loss as
    it was; moving it at a masked one changes it (the check has teeth)."""
    model, groups = _ibot(shared), _groups()
    model.before_micro_batch(_info())
    masks = model.draw_masks(groups[0])
    assert masks.any() and (~masks).any()
    where = {"at": None}

    def shift(module, args, out):  # the student's final norm, on the global crops only
        if where["at"] is not None and out.shape[0] == masks.shape[0] and out.shape[1] == masks.shape[1] + 1:
            out = out.clone()
            out[:, 1:][where["at"]] += 5.0
        return out

    model.student.backbone.norm.register_forward_hook(shift)
    before = model(groups)["patch_loss"]
    where["at"] = ~masks
    assert torch.equal(model(groups)["patch_loss"], before)
    where["at"] = masks
    assert not torch.allclose(model(groups)["patch_loss"], before)


def test_masks_are_keyed_by_image_not_by_how_the_batch_is_split():
    args = dict(views=2, grid=(4, 4), ratio=0.3, ratio_var=0.2, probability=0.5, min_block=1.0, min_aspect=0.3)
    whole = keyed_crop_masks(7, slice(0, 8), **args)
    halves = [keyed_crop_masks(7, rows, **args) for rows in (slice(0, 4), slice(4, 8))]
    # view-major: view 0 of images 0..7, then view 1
    split = torch.cat([halves[0][:4], halves[1][:4], halves[0][4:], halves[1][4:]])
    assert torch.equal(whole, split)
    many = keyed_crop_masks(3, slice(0, 2000), **args).sum(-1).float() / 16
    assert 0.45 < (many == 0).float().mean() < 0.55  # half the crops unmasked
    assert many[many > 0].min() >= 1 / 16 and many.max() <= 0.5  # the rest within U(0.1, 0.5) of 16 patches


TINY = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2", "--model.patch_size", "4",
        "--model.img_size", "16", "--crops.local_number", "2", "--crops.local_size", "8",
        "--crops.blur_sigma", "[0.1, 0.5]", "--dino.out_dim", "128", "--dino.hidden_dim", "64",
        "--dino.bottleneck_dim", "32", "--dino.use_bn_in_head", "false", "--ibot.patch_out_dim", "96",
        "--train.batch_size", "16", "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0",
        "--train.log_every", "1", "--train.save_every", "1", "--train.picture_every", "2",
        "--start", "none"]  # a folder's recipe trains an MAE start first (tests/test_start.py); not here


def _run(out, data, extra=(), stop=None):
    return run_pretraining(IBOTRunConfig, "ibot", argv=[*TINY, "--data", str(data), "--out", str(out), *extra],
                           stop=stop)


@pytest.mark.parametrize("shared", ["true", "false"])
def test_ibot_trains_resumes_mid_epoch_exactly_exports_to_timm_and_is_probed(shared, tmp_path, image_folder,
                                                                           fresh_accelerate):
    from sslvit.train.stop_signals import RunStopped
    from tests.run_checks import assert_same_backbone, assert_timm_loads_and_is_probed
    from tests.test_shards import _StopAtCall

    extra = ["--ibot.shared_head", shared]
    straight = _run(tmp_path / "straight", image_folder, extra)
    records = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "patch_loss" in r]
    assert len(steps) == 6 and all(r["patch_loss"] > 0 and r["cls_loss"] > 0 for r in steps)
    fresh_accelerate()
    with pytest.raises(RunStopped):  # checks: 1 (epoch 1), 2-4, 5 (epoch 2), 6 = after step 4
        _run(tmp_path / "resumed", image_folder, extra, stop=_StopAtCall(6))
    fresh_accelerate()
    resumed = _run(tmp_path / "resumed", image_folder, [*extra, "--resume"])
    assert_same_backbone(straight, resumed)
    assert_timm_loads_and_is_probed(straight)


def test_defaults_are_ibots_vit_s_recipe_and_digits_gets_its_preset(tmp_path):
    from sslvit.config import build_config
    from sslvit.train.entry import load_presets

    ref = build_config(IBOTRunConfig, ["--data", str(tmp_path)], presets=load_presets("ibot"))
    d, c, i = ref.dino, ref.crops, ref.ibot
    assert (ref.model.size, ref.model.patch_size, ref.model.img_size) == ("small", 16, 224)
    assert (d.out_dim, d.teacher_temp, d.warmup_teacher_temp, d.warmup_teacher_temp_epochs, d.norm_last_layer) == \
        (8192, 0.07, 0.04, 30, False)
    assert (c.local_number, c.local_scale, c.global_scale) == (10, (0.05, 0.25), (0.25, 1.0))
    assert (i.weight, i.shared_head, i.mask_ratio, i.mask_ratio_var, i.mask_probability) == (1.0, True, 0.3, 0.2, 0.5)
    assert (i.teacher_patch_temp, i.warmup_teacher_patch_temp, i.center_momentum) == (0.07, 0.04, 0.9)
    demo = build_config(IBOTRunConfig, [], presets=load_presets("ibot"))
    assert (demo.model.size, demo.model.img_size, demo.dino.out_dim, demo.out) == ("tiny", 16, 1024, "runs/ibot-digits")
    with pytest.raises(ValueError, match="ibot.mask_ratio 0.9"):
        build_config(IBOTRunConfig, ["--ibot.mask_ratio", "0.9"]).validate()


def test_ibot_and_mae_train_with_register_tokens_and_the_probes_read_them(tmp_path, image_folder, fresh_accelerate):
    from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe
    from sslvit.models.export import load_backbone
    from sslvit.objectives.mae import MAE, MAEConfig

    run = _run(tmp_path / "reg", image_folder, ["--model.reg_tokens", "2", "--train.epochs", "1"])
    backbone, cfg = load_backbone(run)
    assert cfg.reg_tokens == 2 and backbone.reg_token.shape == (1, 2, 192)
    knn = run_knn_probe(KNNProbeConfig(ckpt=str(run), ks=(5,), baselines=False, picture_queries=0))
    assert np.isfinite(knn["results"]["pretrained"][5]["top1"])
    mae = MAE(build_backbone(BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16, reg_tokens=2)),
              MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    out = mae(torch.randn(2, 3, 16, 16))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and mae.backbone.reg_token.grad.abs().sum() > 0
    assert "backbone.reg_token" not in mae.no_weight_decay()  # decayed, as MAE decays its cls token
