import pytest
import torch
import torch.nn as nn

from sslvit.models import BackboneConfig, HMLPStem, build_backbone
from sslvit.models.hmlp_stem import hmlp_kernels


def _perturb_patch(x, i, j, p):
    y = x.clone()
    y[0, :, i * p:(i + 1) * p, j * p:(j + 1) * p] += torch.randn(3, p, p) * 3
    return y


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("patch_size", [4, 8, 16])
def test_one_patch_change_moves_only_that_patch(train_mode, patch_size):
    stem = HMLPStem(img_size=4 * patch_size, patch_size=patch_size, embed_dim=64).train(train_mode)
    x = torch.randn(3, 3, 4 * patch_size, 4 * patch_size)
    i, j = 1, 2
    e0, e1 = stem(x), stem(_perturb_patch(x, i, j, patch_size))
    changed = (e0 - e1).abs().amax(-1) > 1e-6  # (B, N)
    expected = torch.zeros_like(changed)
    expected[0, i * 4 + j] = True
    assert torch.equal(changed, expected)


def test_a_batchnorm_stem_would_fail_the_independence_check():
    # the check above catches the DeiT reference's leak: BatchNorm batch statistics in train mode
    stem = HMLPStem(img_size=32, patch_size=16, embed_dim=64).train()
    stem.proj[1] = nn.BatchNorm2d(16)
    x = torch.randn(2, 3, 32, 32)
    changed = (stem(x) - stem(_perturb_patch(x, 0, 0, 16))).abs().amax(-1) > 1e-6
    assert changed.sum() > 1


@pytest.mark.parametrize("stem", ["hmlp", "linear"])
def test_stem_on_visible_patches_equals_all_then_gather(stem):
    model = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, stem=stem, depth=1))
    x = torch.randn(2, 3, 32, 32)
    full = model.patch_embed(x)  # (B, 16, D)
    ids = torch.stack([torch.randperm(16)[:5] for _ in range(2)])
    patches = model.patchify(x)
    vis = torch.gather(patches, 1, ids[:, :, None, None, None].expand(-1, -1, 3, 8, 8))
    torch.testing.assert_close(model.embed_patches(vis), torch.gather(full, 1, ids[:, :, None].expand(-1, -1, 192)),
                               rtol=1e-5, atol=1e-5)


def test_encode_of_the_visible_patches_matches_reference_encoder():
    model = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.stack([torch.randperm(16)[:4] for _ in range(2)])
    # reference: MAE's order -- stem on all, add pos embed, keep visible, prepend cls + its pos embed
    tokens = model.patch_embed(x) + model.pos_embed[:, 1:]
    tokens = torch.gather(tokens, 1, ids[:, :, None].expand(-1, -1, 192))
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1)
    ref = model.norm(model.blocks(torch.cat([cls, tokens], 1)))
    torch.testing.assert_close(model.encode(x, keep=ids), ref, rtol=1e-5, atol=1e-5)
    all_ids = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(model.encode(x, keep=all_ids), model.forward_features(x), rtol=1e-5, atol=1e-5)


def test_embed_layer_contract():
    stem = HMLPStem(img_size=64, patch_size=16, embed_dim=96, strict_img_size=False, output_fmt="NHWC",
                    dynamic_img_pad=False, unknown_future_kwarg=1)
    assert stem.num_patches == 16 and stem.grid_size == (4, 4) and stem.feat_ratio() == 16
    assert stem.feat_ratio(as_scalar=False) == (16, 16)
    assert stem.dynamic_feat_size((96, 48)) == (6, 3)
    assert stem(torch.randn(1, 3, 96, 48)).shape == (1, 6, 3, 96)
    stem.set_input_size(img_size=(96, 96))
    assert stem.grid_size == (6, 6) and stem.num_patches == 36
    padded = HMLPStem(img_size=64, patch_size=16, embed_dim=96, strict_img_size=False, dynamic_img_pad=True)
    assert padded(torch.randn(1, 3, 70, 64)).shape == (1, 20, 96)
    assert hmlp_kernels(16) == (4, 2, 2) and hmlp_kernels(8) == (2, 2, 2) and hmlp_kernels(4) == (1, 2, 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        hmlp_kernels(6)
    with pytest.raises(ValueError, match="does not match"):
        HMLPStem(img_size=64, patch_size=16)(torch.randn(1, 3, 32, 32))


def test_dynamic_img_size_backbone_runs_other_grids():
    model = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1, dynamic_img_size=True))
    assert model.forward_features(torch.randn(2, 3, 16, 24)).shape == (2, 1 + 2 * 3, 192)
    ids = torch.arange(3).expand(2, -1)
    assert model.encode(torch.randn(2, 3, 16, 24), keep=ids).shape == (2, 4, 192)


def test_encode_full_and_masked_match_timms_own_forward():
    """encode() with no mask is timm's forward_features; with a mask, the masked patches' stem
    outputs are the mask token (written out here as timm's steps with the tokens swapped in)."""
    model = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
    mask = torch.rand(2, 16) < 0.5
    token = torch.randn(1, 1, 192)
    stem = torch.where(mask[..., None], token.expand(2, 16, -1), model.patch_embed(x))
    ref = model.norm(model.blocks(model._pos_embed(stem)))
    torch.testing.assert_close(model.encode(x, mask=mask, mask_token=token), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model.encode(x, keep=torch.zeros(2, 1, dtype=torch.long), mask=mask, mask_token=token)


@pytest.mark.parametrize("mode", ["keep", "mask", "full"])
def test_grad_checkpointing_recomputes_the_blocks_and_changes_no_gradient(mode):
    """model.grad_checkpointing: each block runs again in backward (so its activations were not
    kept), and the gradients equal those without it."""
    grads, calls = [], []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=2, grad_checkpointing=on))
        count = [0]
        model.blocks[0].register_forward_pre_hook(
            lambda *a: count.__setitem__(0, count[0] + 1))  # recompute may stop early
        x = torch.randn(2, 3, 32, 32)
        kw = {"keep": torch.stack([torch.randperm(16)[:5] for _ in range(2)])} if mode == "keep" else \
            {"mask": torch.rand(2, 16) < 0.5, "mask_token": torch.zeros(1, 1, 192)} if mode == "mask" else {}
        model.encode(x, **kw).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        calls.append(count[0])
    assert calls == [1, 2]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("mode", ["keep", "mask", "full"])
def test_register_tokens_sit_after_cls_with_their_own_positions_and_export_to_timm(mode):
    """model.reg_tokens R: encode's output is (B, 1 + R + tokens, D), the registers' rows are
    timm's own, and timm builds the same model from the exported spec and weights."""
    import timm

    from sslvit.models.vit import timm_spec

    cfg = BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=2, reg_tokens=4, pos_embed="learned")
    model = build_backbone(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.num_prefix_tokens == 5 and model.pos_embed.shape[1] == 16 + 5
    if mode == "full":
        torch.testing.assert_close(model.encode(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
    elif mode == "keep":
        assert model.encode(x, keep=torch.zeros(2, 3, dtype=torch.long)).shape == (2, 5 + 3, 192)
    else:
        out = model.encode(x, mask=torch.rand(2, 16) < 0.5, mask_token=torch.zeros(1, 1, 192))
        assert out.shape == (2, 5 + 16, 192)
    spec = timm_spec(cfg)
    theirs = timm.create_model(**spec).eval()
    theirs.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(theirs.forward_features(x), model.encode(x), rtol=1e-5, atol=1e-5)


def _zero_conv_biases(stem):
    for m in stem.proj:
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.bias)
    return stem


def test_the_old_inner_layernorm_erases_how_strongly_a_patch_responds():
    """Why stem_norm 'none' is the default: with the per-position LayerNorm after the first
    convolution (and no conv bias), a patch at 10 % of the contrast embeds as the full one,
    so faint background noise weighs as much as strokes; without it the contrast reaches the output."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    old = _zero_conv_biases(HMLPStem(img_size=32, patch_size=8, embed_dim=64, inner_norm="layer")).eval()
    new = _zero_conv_biases(HMLPStem(img_size=32, patch_size=8, embed_dim=64)).eval()
    torch.testing.assert_close(old(0.1 * x), old(x), rtol=1e-3, atol=1e-3)
    assert (new(0.1 * x) - new(x)).abs().mean() > 0.1
    assert not any(isinstance(m, nn.modules.normalization.LayerNorm) or type(m).__name__ == "LayerNorm2d"
                   for m in list(new.proj)[:-1])
    assert [type(m).__name__ for m in old.proj].count("LayerNorm2d") == 3
    with pytest.raises(ValueError, match="inner_norm 'batch' is unknown"):
        HMLPStem(img_size=32, patch_size=8, embed_dim=64, inner_norm="batch")


def test_an_older_backbone_with_the_inner_layernorms_still_loads(tmp_path):
    """A backbone.json written before ``stem_norm`` existed describes the stem of then; its
    weights load strictly, and --init from it into a run of today's stem names the key to pass."""
    import json

    from sslvit.models.checkpoint_layouts import WeightsError
    from sslvit.models.export import export_backbone, load_backbone
    from sslvit.models.init_from import check_backbone

    cfg = BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1, stem_norm="layer")
    old = build_backbone(cfg)
    export_backbone(old, cfg, tmp_path)
    spec = json.loads((tmp_path / "backbone.json").read_text())
    assert spec["timm"]["embed_layer_kwargs"] == {"inner_norm": "layer"}
    del spec["backbone"]["stem_norm"]
    (tmp_path / "backbone.json").write_text(json.dumps(spec))
    model, read = load_backbone(tmp_path)
    assert read.stem_norm == "layer"
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), old.eval()(x))
    today = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1))
    assert "patch_embed.proj.1.weight" not in today.state_dict()
    with pytest.raises(WeightsError, match="--model.stem_norm layer"):
        check_backbone(old.state_dict(), today.state_dict())


def test_resuming_a_run_from_before_stem_norm_keeps_its_stem(tmp_path):
    """--resume of a run whose config.yaml predates ``model.stem_norm`` rebuilds the stem it was
    trained with; a fresh run gets today's."""
    import yaml

    from sslvit.config import save_yaml
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train import entry

    cfg = entry.run_config(MAERunConfig, "mae", argv=["--data", "digits", "--out", str(tmp_path)])
    assert cfg.model.stem_norm == "none"
    save_yaml(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["model"]["stem_norm"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = entry.run_config(MAERunConfig, "mae", argv=["--data", "digits", "--out", str(tmp_path), "--resume"])
    assert resumed.model.stem_norm == "layer"
