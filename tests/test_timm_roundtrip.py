import timm
import torch

from sslvit.models import BackboneConfig, HMLPStem, build_backbone, timm_spec


def _roundtrip(cfg: BackboneConfig, **create_kwargs):
    ours = build_backbone(cfg).eval()
    theirs = timm.create_model(**create_kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs.forward_features(x), ours.forward_features(x))
        torch.testing.assert_close(theirs(x), ours.features(x, pool="cls"))


def test_hmlp_backbone_loads_into_timm_by_name():
    cfg = BackboneConfig(size="tiny", patch_size=16, img_size=224, stem="hmlp")
    _roundtrip(cfg, model_name="vit_tiny_patch16_224", pretrained=False, num_classes=0, embed_layer=HMLPStem)


def test_linear_stem_backbone_loads_into_plain_timm():
    cfg = BackboneConfig(size="tiny", patch_size=8, img_size=32, stem="linear", pos_embed="learned")
    _roundtrip(cfg, model_name="vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=8, img_size=32)


def test_parallel_blocks_and_spec_roundtrip():
    cfg = BackboneConfig(size="small", patch_size=8, img_size=32, depth=3, parallel=2, init_values=1e-5)
    model = build_backbone(cfg)
    assert type(model.blocks[0]).__name__ == "ParallelThingsBlock" and len(model.blocks) == 3
    assert any(".attns.1.attn.qkv." in k for k in model.state_dict())
    _roundtrip(cfg, **timm_spec(cfg))


def test_sincos_pos_embed_is_fixed_and_learned_is_trainable():
    fixed = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1))
    learned = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1, pos_embed="learned"))
    assert not fixed.pos_embed.requires_grad and learned.pos_embed.requires_grad
    assert torch.all(fixed.pos_embed[0, 0] == 0)  # cls row is zero, as in MAE
    assert fixed.pos_embed[0, 1:].abs().max() <= 1.0
