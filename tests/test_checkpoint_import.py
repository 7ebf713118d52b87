"""--init / --weights / export: the official layouts, built here from the key names and shapes the
official code defines (tables below, each citing its file), filled with random tensors; nothing
is downloaded."""
import dataclasses
import re

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from safetensors.torch import load_file, save_file

from sslvit.models.checkpoint_layouts import (import_file, import_layout, from_sslvit_checkpoint, to_dino, to_mae,
                                              to_timm)
from sslvit.models.export import export_backbone, main as export_main
from sslvit.models.init_from import load_imported
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.dino import DINO, DINOConfig
from sslvit.objectives.mae import MAE, MAEConfig

D, DEPTH, P, IMG = 192, 2, 4, 16  # ViT-Ti width (heads come from the size), 2 blocks, 4x4 grid
N = (IMG // P) ** 2
DEC, DEC_DEPTH = 32, 1
K, HIDDEN, BOTTLENECK = 64, 32, 16


def vit_block_table(prefix: str, dim: int) -> dict:
    """timm's ``Block`` as facebookresearch/mae ``models_mae.py`` and facebookresearch/dino
    ``vision_transformer.py`` use it (norm1, attn.qkv with bias, attn.proj, norm2, mlp.fc1/fc2, ratio 4)."""
    return {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
            f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
            f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
            f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
            f"{prefix}.mlp.fc1.weight": (4 * dim, dim), f"{prefix}.mlp.fc1.bias": (4 * dim,),
            f"{prefix}.mlp.fc2.weight": (dim, 4 * dim), f"{prefix}.mlp.fc2.bias": (dim,)}


def vit_encoder_table(patch: int = P, grid_rows: int = N) -> dict:
    """MAE's encoder (models_mae.py ``MaskedAutoencoderViT``: patch_embed, cls_token, pos_embed (1, N + 1, D),
    blocks, norm) = DINO's ``VisionTransformer`` (vision_transformer.py, same names)."""
    table = {"cls_token": (1, 1, D), "pos_embed": (1, grid_rows + 1, D),
             "patch_embed.proj.weight": (D, 3, patch, patch), "patch_embed.proj.bias": (D,),
             "norm.weight": (D,), "norm.bias": (D,)}
    for i in range(DEPTH):
        table.update(vit_block_table(f"blocks.{i}", D))
    return table


def mae_table() -> dict:
    """models_mae.py: decoder_embed Linear(D, Dd), mask_token (1, 1, Dd), decoder_pos_embed (1, N + 1, Dd),
    decoder_blocks, decoder_norm, decoder_pred Linear(Dd, P*P*3)."""
    table = {**vit_encoder_table(), "decoder_embed.weight": (DEC, D), "decoder_embed.bias": (DEC,),
             "mask_token": (1, 1, DEC), "decoder_pos_embed": (1, N + 1, DEC),
             "decoder_norm.weight": (DEC,), "decoder_norm.bias": (DEC,),
             "decoder_pred.weight": (P * P * 3, DEC), "decoder_pred.bias": (P * P * 3,)}
    for i in range(DEC_DEPTH):
        table.update(vit_block_table(f"decoder_blocks.{i}", DEC))
    return table


def dino_head_table() -> dict:
    """vision_transformer.py ``DINOHead`` (nlayers 3, no BN): mlp = Linear, GELU, Linear, GELU, Linear;
    last_layer = nn.utils.weight_norm(Linear(bottleneck, K, bias=False)): weight_g (K, 1), weight_v (K, bottleneck)."""
    return {"mlp.0.weight": (HIDDEN, D), "mlp.0.bias": (HIDDEN,), "mlp.2.weight": (HIDDEN, HIDDEN),
            "mlp.2.bias": (HIDDEN,), "mlp.4.weight": (BOTTLENECK, HIDDEN), "mlp.4.bias": (BOTTLENECK,),
            "last_layer.weight_g": (K, 1), "last_layer.weight_v": (K, BOTTLENECK)}


def random_state(table: dict, gen) -> dict:
    return {k: torch.randn(shape, generator=gen) for k, shape in table.items()}


def official_mae(gen) -> dict:
    """main_pretrain.py's ``misc.save_model``: {'model': state_dict, 'epoch': ...} (optimizer, scaler, args too)."""
    return {"model": random_state(mae_table(), gen), "epoch": 400}


def official_dino(gen) -> dict:
    """main_dino.py's ``save_dict``: student under DDP (``module.``), teacher without, dino_loss.center (1, K)."""
    def wrapped(ddp):
        return {**{f"{ddp}backbone.{k}": v for k, v in random_state(vit_encoder_table(), gen).items()},
                **{f"{ddp}head.{k}": v for k, v in random_state(dino_head_table(), gen).items()}}
    return {"student": wrapped("module."), "teacher": wrapped(""), "epoch": 100,
            "dino_loss": {"center": torch.randn(1, K, generator=gen)}}


def backbone_cfg(**kw) -> BackboneConfig:
    return BackboneConfig(size="tiny", depth=DEPTH, patch_size=P, img_size=IMG, stem="linear", **kw)


def mae_objective(target="pixels", **kw) -> MAE:
    return MAE(build_backbone(backbone_cfg(**kw)), MAEConfig(decoder_dim=DEC, decoder_depth=DEC_DEPTH, decoder_heads=2,
                                                            target=target))


def dino_objective() -> DINO:
    cfg = backbone_cfg(pos_embed="learned")
    return DINO(build_backbone(cfg), build_backbone(cfg), DINOConfig(out_dim=K, hidden_dim=HIDDEN,
                                                                     bottleneck_dim=BOTTLENECK))


def assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def fake_run(root, objective, cfg: BackboneConfig):
    """A run folder as the loop leaves it: backbone.safetensors + .json, one checkpoint of the whole objective."""
    root.mkdir()
    export_backbone(objective.exported_backbone(), cfg, root)
    ckpt = root / "checkpoints" / "epoch_0001"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in objective.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "meta.json").write_text('{"epoch": 0, "step": 3}')
    return root


def test_official_mae_round_trip_keeps_every_tensor(tmp_path, capsys):
    raw = official_mae(torch.Generator().manual_seed(1))
    mae = mae_objective()
    lines = load_imported(mae, mae.init_targets(), import_layout(raw))
    assert lines[0].startswith("official MAE checkpoint (encoder and decoder) found; loaded backbone, mae_decoder")
    assert not any("fresh" in line for line in lines)
    run = fake_run(tmp_path / "run", mae, backbone_cfg())
    export_main([str(run), "--to", "mae", str(tmp_path / "mae.pth")])
    assert "official MAE layout: model (" in capsys.readouterr().out
    assert_same(torch.load(tmp_path / "mae.pth", weights_only=True)["model"], raw["model"])
    luma = mae_objective(target="luma")  # its decoder regresses P*P grey values, which MAE's code cannot read
    with pytest.raises(Exception, match="regresses luma .* export the backbone --to timm instead"):
        to_mae({"backbone": luma.backbone.state_dict(), "mae_decoder": luma.decoder.state_dict()})


def official_unpatchify(x, p):
    """models_mae.py ``unpatchify``: (B, L, p*p*3) -> (B, 3, H, W) via einsum 'nhwpqc->nchpwq'."""
    h = int(x.shape[1] ** 0.5)
    x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, h, p, p, 3))
    return x.reshape(x.shape[0], 3, h * p, h * p)


def test_decoder_pred_rows_follow_sslvit_patch_order():
    """The official prediction, unpatchified the official way, is the image sslvit's converted
    decoder_pred predicts, unpatchified sslvit's way: the (P, P, C) -> (C, P, P) reordering."""
    raw = official_mae(torch.Generator().manual_seed(2))
    mae = mae_objective()
    load_imported(mae, mae.init_targets(), import_layout(raw))
    x = torch.randn(2, N, DEC)
    w, b = raw["model"]["decoder_pred.weight"], raw["model"]["decoder_pred.bias"]
    ours = mae._unpatchify(mae.decoder.decoder_pred(x))
    torch.testing.assert_close(ours, official_unpatchify(x @ w.t() + b, P))


def test_official_dino_round_trip_and_weight_norm(tmp_path):
    raw = official_dino(torch.Generator().manual_seed(3))
    dino = dino_objective()
    lines = load_imported(dino, dino.init_targets(), import_layout(raw))
    assert "loaded backbone, dino_head, teacher_backbone, teacher_dino_head, dino_center" in lines[0]
    assert not any("fresh" in line or "copy" in line for line in lines)
    export_main([str(fake_run(tmp_path / "run", dino, backbone_cfg(pos_embed="learned"))), "--to", "dino",
                 str(tmp_path / "dino.pth")])
    back = torch.load(tmp_path / "dino.pth", weights_only=True)
    for name in ("student", "teacher", "dino_loss"):
        assert_same(back[name], raw[name])
    # torch's parametrization gives the official weight norm's weight, g * v / ||v|| per row
    g, v = raw["teacher"]["head.last_layer.weight_g"], raw["teacher"]["head.last_layer.weight_v"]
    torch.testing.assert_close(dino.teacher.module.head.last_layer.weight, g * v / v.norm(dim=1, keepdim=True))
    assert torch.equal(dino.student.backbone.cls_token, raw["student"]["module.backbone.cls_token"])


def test_backbone_only_file_gives_a_fresh_head_and_the_student_as_teacher():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=P, img_size=IMG, depth=DEPTH,
                              num_classes=0)
    dino = dino_objective()
    lines = load_imported(dino, dino.init_targets(), import_layout(model.state_dict()))
    assert lines[0].startswith("timm ViT state dict (linear stem) found; loaded backbone.")
    assert any(line.startswith("teacher_backbone, teacher_dino_head: the student's copy") for line in lines)
    fresh = next(line for line in lines if line.startswith("initialised fresh"))
    assert fresh == "initialised fresh (not in the file): student.head, loss.center."
    assert_same(dino.teacher.module.state_dict(), dino.student.state_dict())


def test_timm_model_imports_and_gives_timm_features_and_exports_back(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=P, img_size=IMG, depth=DEPTH,
                              num_classes=0).eval()
    mae = mae_objective(pos_embed="learned")
    lines = load_imported(mae, mae.init_targets(), import_layout(model.state_dict()))
    assert "initialised fresh (not in the file): decoder." in lines
    imgs = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(mae.backbone.eval().forward_features(imgs), model.forward_features(imgs))
    run = fake_run(tmp_path / "run", mae, backbone_cfg(pos_embed="learned"))
    export_main([str(run), "--to", "timm", str(tmp_path / "new" / "timm.safetensors")])  # its folder made
    assert_same(load_file(str(tmp_path / "new" / "timm.safetensors")), model.state_dict())


@pytest.mark.parametrize("to", ["timm", "mae"])
def test_an_export_that_cannot_be_written_is_one_sentence_and_leaves_nothing(to, tmp_path, capsys):
    """A folder as the output, or one under a file: safetensors' SafetensorError and torch's
    traceback came out before."""
    run = fake_run(tmp_path / "run", mae_objective(pos_embed="learned"), backbone_cfg(pos_embed="learned"))
    (tmp_path / "a_file").write_text("x")
    cases = {tmp_path / "out_dir": "a folder", tmp_path / "a_file" / "w.pth": "a file is where its folder would be"}
    for out, why in cases.items():
        (tmp_path / "out_dir").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as e:
            export_main([str(run), "--to", to, str(out)])
        assert e.value.code == 2 and capsys.readouterr().err == (f"error: Cannot write '{out}' ({why}); pass a file "
                                                                 "path in a folder you can write to.\n")
    assert list((tmp_path / "out_dir").iterdir()) == [] and (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize("to", ["timm", "mae"])
def test_an_export_the_disk_cuts_short_is_one_sentence_and_leaves_no_partial_file(to, tmp_path, capsys):
    """A full disk met midway (a 4 KB file-size limit gives the writers' real errors): torch.save's
    RuntimeError ("unexpected pos") came out as a traceback before, and it is no OSError."""
    from tests.test_faults import _files_limited_to

    run = fake_run(tmp_path / "run", mae_objective(pos_embed="learned"), backbone_cfg(pos_embed="learned"))
    out = tmp_path / "out" / "w.pth"
    with _files_limited_to(4096), pytest.raises(SystemExit) as e:
        export_main([str(run), "--to", to, str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: Cannot write '{out}' (") and err.count("\n") == 1, err
    assert err.endswith("); pass a file path in a folder you can write to.\n"), err
    assert list(out.parent.iterdir()) == []


def test_timm_dinov2_model_without_prefix_position_rows_gives_timm_features():
    """timm's DINOv2 models (no_embed_class: pos_embed has no cls / register rows) load with zero prefix rows."""
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, depth=1,
                              num_classes=0).eval()
    ours = build_backbone(BackboneConfig(size="small", depth=1, patch_size=14, img_size=28, stem="linear",
                                         pos_embed="learned", reg_tokens=4, init_values=1e-5)).eval()
    load_imported(ours, {"backbone": ours}, import_layout(model.state_dict()))
    imgs = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(imgs), model.forward_features(imgs))


def test_init_from_an_sslvit_run_keeps_the_whole_objective(tmp_path):
    source = mae_objective()
    run = fake_run(tmp_path / "run", source, backbone_cfg())
    again = mae_objective()
    lines = load_imported(again, again.init_targets(), import_file(run))
    assert lines[0] == "sslvit run checkpoint (backbone, mae_decoder) found; loaded backbone, mae_decoder."
    assert_same(again.state_dict(), source.state_dict())


def test_dino_file_into_mae_takes_the_teacher_and_an_sslvit_hmlp_backbone_loads(tmp_path):
    raw = official_dino(torch.Generator().manual_seed(8))
    mae = mae_objective(pos_embed="learned")
    lines = load_imported(mae, mae.init_targets(), import_layout(raw))
    assert "backbone: the file's teacher (DINO's evaluated backbone), not its student" in lines
    assert "in the file, not used by this run: dino_head, teacher_dino_head, dino_center." in lines
    assert torch.equal(mae.backbone.cls_token, raw["teacher"]["backbone.cls_token"])
    cfg = dataclasses.replace(backbone_cfg(), stem="hmlp")
    export_backbone(build_backbone(cfg), cfg, tmp_path)
    other = build_backbone(cfg)
    lines = load_imported(other, {"backbone": other}, import_file(tmp_path))  # a run folder: its backbone
    assert lines[0] == "sslvit backbone.safetensors (hMLP stem) found; loaded backbone."
    assert_same(other.state_dict(), load_file(str(tmp_path / "backbone.safetensors")))


def dinov2_table(patch: int, side: int, regs: int) -> dict:
    """facebookresearch/dinov2 dinov2/models/vision_transformer.py ``DinoVisionTransformer``: cls_token (1, 1, D),
    pos_embed (1, 1 + N, D) (no rows for the registers), register_tokens (1, R, D), mask_token (1, D); blocks
    (dinov2/layers/block.py) with LayerScale ls1.gamma / ls2.gamma (layers/layer_scale.py)."""
    table = {**vit_encoder_table(patch, side * side), "register_tokens": (1, regs, D), "mask_token": (1, D)}
    for i in range(DEPTH):
        table.update({f"blocks.{i}.ls1.gamma": (D,), f"blocks.{i}.ls2.gamma": (D,)})
    return table


def dinov2_reference(state: dict, imgs, model) -> torch.Tensor:
    """DINOv2's token order (prepare_tokens_with_masks): patches + pos, cls + its pos, then registers
    inserted after cls with no position; blocks (the loaded model's own), final norm."""
    x = torch.nn.functional.conv2d(imgs, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
                                   stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], 1) + state["pos_embed"]
    x = torch.cat([x[:, :1], state["register_tokens"].expand(len(x), -1, -1), x[:, 1:]], 1)
    return model.norm(model.blocks(x))


def test_dinov2_backbone_imports_with_registers_layerscale_and_a_resampled_table():
    state = random_state(dinov2_table(14, 4, 3), torch.Generator().manual_seed(4))
    cfg = dataclasses.replace(backbone_cfg(pos_embed="learned", reg_tokens=3, init_values=1e-5), patch_size=14,
                              img_size=56)
    native = build_backbone(cfg).eval()
    lines = load_imported(native, {"backbone": native}, import_layout(state))
    assert lines[0].startswith("DINOv2 backbone (patch 14, 3 registers, LayerScale) found; loaded backbone.")
    assert "in the file, not used by this run: mask_token (DINOv2's, (1, D))." in lines
    imgs = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(native.forward_features(imgs), dinov2_reference(state, imgs, native))
    small = build_backbone(dataclasses.replace(cfg, img_size=28))  # a 2x2 grid: the 4x4 table is resampled
    lines = load_imported(small, {"backbone": small}, import_layout(state))
    assert "backbone: position table resampled from 4x4 to 2x2 (bicubic)" in lines
    want = resample_abs_pos_embed(state["pos_embed"][:, 1:], new_size=[2, 2], old_size=[4, 4], num_prefix_tokens=0)
    torch.testing.assert_close(small.pos_embed[:, 4:], want)
    assert torch.equal(small.pos_embed[:, 0], state["pos_embed"][:, 0]) and not small.pos_embed[:, 1:4].any()


def test_shapes_that_cannot_map_are_one_sentence():
    gen = torch.Generator().manual_seed(5)
    raw = official_mae(gen)
    hmlp = MAE(build_backbone(dataclasses.replace(backbone_cfg(), stem="hmlp")),
               MAEConfig(decoder_dim=DEC, decoder_depth=DEC_DEPTH, decoder_heads=2))
    with pytest.raises(ValueError, match=r"model.stem is hmlp.*pass --model.stem linear\.$"):
        load_imported(hmlp, hmlp.init_targets(), import_layout(raw))
    small = MAE(build_backbone(dataclasses.replace(backbone_cfg(), size="small", depth=3)), MAEConfig(decoder_dim=DEC))
    with pytest.raises(ValueError, match=r"model.size tiny in the file, small in this run; model.depth 2 in the file, "
                                         r"3 in this run\); pass --model.size tiny --model.depth 2\.$"):
        load_imported(small, small.init_targets(), import_layout(raw))
    wide = MAE(build_backbone(backbone_cfg()), MAEConfig(decoder_dim=64, decoder_depth=DEC_DEPTH, decoder_heads=2))
    with pytest.raises(ValueError, match=r"mae_decoder does not fit.*; pass --mae.decoder_dim 32\.$"):
        load_imported(wide, wide.init_targets(), import_layout(raw))
    with pytest.raises(ValueError, match=r"matches none of the layouts sslvit reads.*looked for a timm ViT"):
        import_layout({"weights": {"fc.weight": torch.zeros(2, 2)}})


def test_files_are_read_with_weights_only(tmp_path):
    import argparse
    import fractions
    gen = torch.Generator().manual_seed(6)
    good, bad = tmp_path / "mae.pth", tmp_path / "evil.pth"
    torch.save({**official_mae(gen), "args": argparse.Namespace(lr=1e-3)}, good)  # main_pretrain.py saves args
    assert import_file(good).layout == "official MAE checkpoint (encoder and decoder)"
    torch.save({"model": official_mae(gen)["model"], "x": fractions.Fraction(1, 3)}, bad)  # not a weight
    with pytest.raises(ValueError, match=r"holds more than weights and is not opened \(weights_only=True refused a "
                                         r"fractions.Fraction\)"):
        import_file(bad)


def test_end_to_end_mae_init_from_an_official_file(tmp_path, fresh_accelerate, monkeypatch, capsys):
    """pretrain/mae.py --init FILE (digits, 1 epoch): the weights the first step starts from are the file's;
    at an lr too small to move an fp32 weight (1e-30), the run's checkpoint exported --to mae is the file again."""
    import sslvit.train.entry as entry
    import sslvit.train.loop as loop  # entry imports the loop when it runs (lazily), so patch it there
    from sslvit.recipes.mae import MAERunConfig

    raw = official_mae(torch.Generator().manual_seed(7))
    # the digits preset's MAE: ViT-Ti/4 at 16 px, decoder 128 x 2 with 4 heads; here 2 blocks, decoder 32 x 1,
    # and no LayerScale (the preset's init_values 0.1 is not in the official architecture)
    path = tmp_path / "mae_official.pth"
    torch.save(raw, path)
    started = {}
    real = loop.pretrain

    def first_step_weights(cfg, objective, *args, **kwargs):
        started.update({k: v.clone() for k, v in objective.state_dict().items()})
        return real(cfg, objective, *args, **kwargs)

    monkeypatch.setattr(loop, "pretrain", first_step_weights)
    argv = ["--init", str(path), "--model.stem", "linear", "--model.init_values", "null", "--model.depth", str(DEPTH),
            "--mae.decoder_dim", str(DEC), "--mae.decoder_depth", str(DEC_DEPTH), "--mae.decoder_heads", "2",
            "--train.epochs", "1",
            "--train.knn_every", "0", "--train.precision", "fp32", "--train.lr", "1e-30",
            "--out", str(tmp_path / "run")]
    run = entry.run_pretraining(MAERunConfig, "mae", argv=argv)
    out = capsys.readouterr().out
    assert f"--init {path}: official MAE checkpoint (encoder and decoder) found; loaded backbone, mae_decoder." in out
    assert_same(to_mae(from_sslvit_checkpoint(started).groups)["model"], raw["model"])
    export_main([str(run), "--to", "mae", str(tmp_path / "back.pth")])
    assert_same(torch.load(tmp_path / "back.pth", weights_only=True)["model"], raw["model"])
    with pytest.raises(Exception, match="--init and --resume were both given"):
        entry.run_config(MAERunConfig, "mae", argv=[*argv, "--resume"])


def test_probe_takes_an_external_file_with_weights(tmp_path, image_folder, fresh_accelerate, capsys):
    """probes/knn.py --weights FILE: an official DINO checkpoint's teacher is imported and probed."""
    from sslvit.eval.cli import main
    from sslvit.eval.knn_probe import KNNProbeConfig, format_table, run_knn_probe
    from sslvit.models.export import load_backbone

    raw = official_dino(torch.Generator().manual_seed(9))
    path = tmp_path / "dino_official.pth"
    torch.save(raw, path)
    main(KNNProbeConfig, run_knn_probe, format_table,
         argv=["--weights", str(path), "--baselines", "false", "--data", str(image_folder)])
    out = capsys.readouterr().out
    assert f"--weights {path}: official DINO checkpoint (student, teacher, heads, center) found" in out
    backbone, cfg = load_backbone(tmp_path / "dino_official_sslvit")
    assert (cfg.size, cfg.depth, cfg.patch_size, cfg.img_size, cfg.stem) == ("tiny", DEPTH, P, IMG, "linear")
    assert torch.equal(backbone.blocks[1].mlp.fc2.weight, raw["teacher"]["backbone.blocks.1.mlp.fc2.weight"])
    assert (tmp_path / "dino_official_sslvit" / "knn.json").is_file()
    with pytest.raises(SystemExit):
        main(KNNProbeConfig, run_knn_probe, format_table, argv=["--weights", str(path), "--ckpt", "runs/x"])
    assert "--weights and --ckpt were both given" in capsys.readouterr().err


def test_a_probes_help_is_its_usage_and_keys_then_the_weights_flag(capsys):
    from sslvit.eval.cli import main
    from sslvit.eval.knn_probe import KNNProbeConfig, format_table, run_knn_probe

    with pytest.raises(SystemExit) as e:
        main(KNNProbeConfig, run_knn_probe, format_table, argv=["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert e.value.code == 0 and lines[0].startswith("usage: ") and "--ckpt 'runs/mae-digits'" in lines[3]
    assert lines[-1].startswith("  --weights FILE") and sum("--weights" in line for line in lines) == 1
