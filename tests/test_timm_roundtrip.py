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


def _readme_block(marker: str) -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    return next(b.split("```")[0] for b in blocks if marker in b.split("```")[0])


def test_the_readmes_timm_snippet_loads_the_backbone_maes_digits_preset_builds(tmp_path, monkeypatch):
    """The README's lines, run as written, on the weights a run of MAE's digits preset writes (the
    preset read as the run reads it, so a change of its shape is caught here); and the sslvit line."""
    from sslvit.models.export import export_backbone, read_backbone_config
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_config

    cfg = run_config(MAERunConfig, "mae", argv=["--data", "digits", "--out", str(tmp_path / "runs/mae-digits")])
    ours = build_backbone(cfg.model).eval()
    (tmp_path / "runs/mae-digits").mkdir(parents=True)
    export_backbone(ours, cfg.model, tmp_path / "runs/mae-digits")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_readme_block("runs/mae-digits/backbone.safetensors"), scope)  # raises if strict loading fails
    x = torch.randn(2, 3, cfg.model.img_size, cfg.model.img_size)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(x), ours.features(x, pool="cls"))
    rebuilt = timm.create_model(**timm_spec(read_backbone_config("runs/mae-digits")))
    rebuilt.load_state_dict(scope["model"].state_dict(), strict=True)


def test_an_exported_backbone_goes_into_a_folder_made_for_it_and_loads_back(tmp_path):
    """export_backbone raised FileNotFoundError for a folder that did not exist yet."""
    from sslvit.models.export import export_backbone, load_backbone

    cfg = BackboneConfig(size="tiny", patch_size=4, img_size=16, depth=2)
    ours = build_backbone(cfg).eval()
    out = tmp_path / "not" / "made" / "yet"
    written = export_backbone(ours, cfg, str(out))  # a str, as a script would pass it
    assert written == out / "backbone.safetensors" and (out / "backbone.json").is_file()
    back, back_cfg = load_backbone(out)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.eval().features(x, pool="cls"), ours.features(x, pool="cls"))
