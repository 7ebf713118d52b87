"""Fine-tuning: layer-wise lr decay, attention-only, higher resolution, an end-to-end run."""
import json

import pytest
import torch

from sslvit.eval.finetune import FinetuneConfig, build_classifier, param_groups_lrd, run_finetune
from sslvit.models import BackboneConfig, build_backbone
from sslvit.models.export import export_backbone

DEPTH = 3


@pytest.fixture
def exported(tmp_path):
    cfg = BackboneConfig(size="tiny", depth=DEPTH, patch_size=4, img_size=16)
    export_backbone(build_backbone(cfg), cfg, tmp_path)
    return tmp_path / "backbone.safetensors"


def test_layer_wise_lr_decay_gives_the_reference_scales(exported):
    model, _ = build_classifier(exported, 5, FinetuneConfig())
    decay = 0.5
    scales = {n: g["lr_scale"] for g in param_groups_lrd(model, 0.05, decay) for n in g["names"]}
    # BEiT / MAE: embeddings are layer 0, block i is layer i + 1, the rest layer depth + 1;
    # scale = decay ** (depth + 1 - layer)
    assert scales["backbone.cls_token"] == decay ** (DEPTH + 1)
    assert scales["backbone.pos_embed"] == decay ** (DEPTH + 1)
    assert scales["backbone.patch_embed.proj.0.weight"] == decay ** (DEPTH + 1)
    for i in range(DEPTH):
        assert scales[f"backbone.blocks.{i}.mlp.fc1.weight"] == decay ** (DEPTH - i)
    assert scales["fc_norm.weight"] == 1.0 and scales["head.weight"] == 1.0  # avg pool: no backbone.norm (MAE)
    assert "backbone.norm.weight" not in scales
    wd = {n: g["weight_decay"] for g in param_groups_lrd(model, 0.05, decay) for n in g["names"]}
    assert wd["backbone.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["backbone.blocks.0.attn.qkv.bias"] == 0.0 and wd["backbone.pos_embed"] == 0.0


def test_attention_only_leaves_every_other_backbone_parameter_unchanged(exported):
    model, _ = build_classifier(exported, 5, FinetuneConfig(mode="attention", drop_path_rate=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = param_groups_lrd(model, 0.05, 0.75)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    trained = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias", "backbone.pos_embed"}
    for n, p in model.named_parameters():
        if ".attn." in n or n in trained:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # bit for bit
    assert any(".attn.qkv." in n for n in before) and any(".mlp." in n for n in before)


def test_higher_resolution_interpolates_the_position_embedding(exported):
    low, _ = build_classifier(exported, 5, FinetuneConfig())
    high, sizes = build_classifier(exported, 5, FinetuneConfig(img_size=24))
    assert sizes == {"img_size": 24, "pretrain_img_size": 16, "head_init_std": 0.02}
    assert high.backbone.pos_embed.shape == (1, 1 + 36, 192) and low.backbone.pos_embed.shape == (1, 17, 192)
    torch.testing.assert_close(high.backbone.pos_embed[:, 0], low.backbone.pos_embed[:, 0])  # cls row kept
    assert high.backbone.pos_embed.requires_grad
    assert high(torch.randn(2, 3, 24, 24)).shape == (2, 5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_classifier(exported, 5, FinetuneConfig(img_size=26))


def test_finetune_run_reports_and_writes(exported, image_folder, fresh_accelerate):
    cfg = dict(ckpt=str(exported), data=str(image_folder), epochs=2, batch_size=8, warmup_epochs=0, eval_every=1)
    full = run_finetune(FinetuneConfig(**cfg))
    fresh_accelerate()
    attn = run_finetune(FinetuneConfig(mode="attention", **cfg))
    assert attn["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert [h["epoch"] for h in full["history"]] == [1, 2]
    for r in (full, attn):
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100 and r["step_time_s"] > 0 and r["peak_memory_mb"] > 0
    written = json.loads((exported.parent / "finetune_attention" / "finetune.json").read_text())
    assert written["trainable_params"] == attn["trainable_params"]
    assert full["lr"] == pytest.approx(4e-3 * 8 / 256) and written["head_init_std"] == 0.02  # 16 px: small images


def test_a_batch_larger_than_the_data_is_one_sentence_and_writes_nothing(exported, image_folder, fresh_accelerate):
    cfg = FinetuneConfig(ckpt=str(exported), data=str(image_folder), epochs=1, batch_size=64)
    with pytest.raises(ValueError) as err:
        run_finetune(cfg)
    message = str(err.value)  # the folder's 48 training images against the effective batch,
                              # as the pretraining loop says
    assert "has 48 images, fewer than one batch of 64 x 1 processes; lower --batch_size." in message
    assert "\n" not in message and not (exported.parent / "finetune_full").exists()


def test_the_default_batch_fits_a_small_folder_as_the_pretraining_recipe_does(exported, image_folder,
                                                                             fresh_accelerate, capsys):
    """No --batch_size on 48 training images: 16 a process (the largest power of two at most half
    of them), the lr scaled by it and the start line saying why; 64 images or more keep 64."""
    from sslvit.eval.finetune import finetune_batch

    report = run_finetune(FinetuneConfig(ckpt=str(exported), data=str(image_folder), epochs=1, warmup_epochs=0))
    assert (report["effective_batch"], report["lr"]) == (16, pytest.approx(4e-3 * 16 / 256))
    assert "effective batch 16 (64 a process capped at half the 48 training images; --batch_size sets it)" in \
        capsys.readouterr().out
    assert [finetune_batch(None, n, p)[0] for n, p in ((4500, 1), (128, 1), (127, 1), (128, 2), (3, 1))] == [64, 64, 32,
                                                                                                        32, 2]
    assert finetune_batch(8, 48, 1) == (8, "")
    two = " (64 a process capped at half the 24 training images each process reads; --batch_size sets it)"
    assert finetune_batch(None, 48, 2) == (8, two)


def test_average_pool_head_is_maes_global_pool():
    """models_vit.py with global_pool: blocks, then the mean of the patch tokens, then fc_norm,
    then the head; the backbone's final norm is dropped."""
    import torch.nn as nn

    from sslvit.eval.finetune import Classifier
    from sslvit.models.vit import BackboneConfig, build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16))
    final_norm = backbone.norm
    model = Classifier(backbone, 10, pool="avg").eval()
    nn.init.normal_(model.head.weight)
    nn.init.normal_(model.fc_norm.weight)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = backbone.blocks(backbone._pos_embed(backbone.patch_embed(x)))  # timm's pieces, no final norm
        expected = model.head(model.fc_norm(tokens[:, 1:].mean(1)))
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert not any(m is final_norm for m in model.modules())


def test_head_init_follows_the_image_size_and_the_key(exported, tmp_path):
    """MAE starts its head at std 2e-5 for 100-epoch ImageNet fine-tunes; at small image sizes (a
    short fine-tune on few images) the head starts at 0.02, and --head_init_std always wins."""
    from sslvit.eval.finetune import head_init_for

    assert head_init_for(224) == 2e-5 and head_init_for(65) == 2e-5
    assert head_init_for(64) == 0.02 and head_init_for(16) == 0.02
    assert head_init_for(16, 2e-5) == 2e-5 and head_init_for(224, 0.02) == 0.02
    small, sizes = build_classifier(exported, 10, FinetuneConfig())  # a 16 px backbone
    assert sizes["head_init_std"] == 0.02
    assert 0.015 < small.head.weight.std().item() < 0.025  # 1,920 draws of a truncated N(0, 0.02)
    tiny, _ = build_classifier(exported, 10, FinetuneConfig(head_init_std=2e-5))
    assert tiny.head.weight.abs().max().item() < 1e-4
    big = tmp_path / "big"
    big.mkdir()
    cfg = BackboneConfig(size="tiny", depth=1, patch_size=16, img_size=80)
    export_backbone(build_backbone(cfg), cfg, big)
    mae, sizes = build_classifier(big / "backbone.safetensors", 10, FinetuneConfig())
    assert sizes["head_init_std"] == 2e-5 and mae.head.weight.abs().max().item() < 1e-4


def test_base_lr_follows_the_image_size_and_the_key():
    """MAE's blr 5e-4 above 64 px; 4e-3 (lr 1e-3 at batch 64) for small images; --blr always wins."""
    from sslvit.eval.finetune import blr_for

    assert blr_for(224) == 5e-4 and blr_for(65) == 5e-4
    assert blr_for(64) == 4e-3 and blr_for(32) == 4e-3
    assert blr_for(32, 1e-3) == 1e-3 and blr_for(224, 4e-3) == 4e-3
