"""Linear probe: the batched lr grid against independently trained heads, the feature cache."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslvit.config import build_config
from sslvit.eval.linear_heads import LARS, grid_accuracy, train_head_grid
from sslvit.eval.linear_probe import LinearProbeConfig
from sslvit.runtime.schedules import cosine_schedule


def _data(n=96, dim=12, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g)
    return [centers[y] + torch.randn(n, dim, generator=g) for _ in range(2)], y


def single_head(passes, y, classes, lr, wd, epochs, batch_size, optimizer, batchnorm, w0, seed=0):
    """One nn.Linear trained alone, written out: same initial weights, same seeded batches,
    same warmup-free cosine lr per step, torch's SGD (or LARS) on its two parameters."""
    head = nn.Linear(passes[0].shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(w0)
        head.bias.zero_()
    norm = nn.BatchNorm1d(passes[0].shape[1], affine=False, eps=1e-6) if batchnorm else nn.Identity()
    opt = (torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=wd) if optimizer == "sgd"
           else LARS(head.parameters(), lr=lr, weight_decay=wd))
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = epochs * -(-n // batch_size)
    step = 0
    for epoch in range(epochs):
        x = passes[epoch % len(passes)]
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            for group in opt.param_groups:
                group["lr"] = cosine_schedule(step, steps, lr, 0.0)
            loss = F.cross_entropy(head(norm(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return head


@pytest.mark.parametrize("optimizer,batchnorm", [("sgd", False), ("sgd", True), ("lars", True)])
def test_each_head_of_the_grid_equals_an_independently_trained_head(optimizer, batchnorm):
    passes, y = _data()
    lrs, wds = [0.01, 0.1, 1.0], [0.0, 1e-3, 1e-2]
    grid = train_head_grid(passes, y, 4, lrs, wds, epochs=3, batch_size=32, optimizer=optimizer,
                           batchnorm=batchnorm, seed=0)
    torch.manual_seed(0)
    w0 = nn.init.trunc_normal_(torch.empty(4, 12), std=0.01)  # the grid's documented initialisation
    for g, (lr, wd) in enumerate(zip(lrs, wds)):
        ref = single_head(passes, y, 4, lr, wd, 3, 32, optimizer, batchnorm, w0)
        torch.testing.assert_close(grid.weights[g].detach(), ref.weight.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grid.biases[g].detach(), ref.bias.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(grid.weights[0], grid.weights[2])  # the lrs really differ


def test_grid_accuracy_counts_top1_and_top5():
    passes, y = _data(classes=6)
    grid = train_head_grid(passes, y, 6, [0.5], [0.0], epochs=20, batch_size=32)
    top1, top5 = grid_accuracy(grid, passes[0], y)
    logits = grid(passes[0])[0]
    assert top1.item() == pytest.approx((logits.argmax(1) == y).float().mean().item() * 100)
    assert top1.item() <= top5.item() and top1.item() > 50


TINY_MAE = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2",
            "--model.patch_size", "4", "--model.img_size", "16",
            "--mae.decoder_dim", "32", "--mae.decoder_depth", "1", "--mae.decoder_heads", "2",
            "--train.batch_size", "16", "--train.epochs", "1", "--train.warmup_epochs", "0",
            "--train.num_workers", "0"]


def test_probe_caches_features_by_checkpoint_recipe_and_data(tmp_path, image_folder, fresh_accelerate,
                                                             monkeypatch):
    import dataclasses
    import json

    from safetensors.torch import load_file, save_file

    from sslvit.eval import linear_probe
    from sslvit.eval.linear_probe import LinearProbeConfig, run_linear_probe
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining

    run = run_pretraining(MAERunConfig, "mae", argv=[*TINY_MAE, "--data", str(image_folder),
                                                     "--out", str(tmp_path / "run")])
    cfg = LinearProbeConfig(ckpt=str(run), epochs=3, lrs=(0.01, 0.1, 1.0), batch_size=16)
    first = run_linear_probe(cfg)
    assert not first["features_from_cache"]
    written = json.loads((run / "linear.json").read_text())
    assert len(written["grid"]) == 3 and written["best"] == written["grid"][written["best_index"]]
    assert written["best"]["holdout_top1"] == max(r["holdout_top1"] for r in written["grid"])

    calls = {"n": 0}
    real = linear_probe.extract_features

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(linear_probe, "extract_features", counting)
    second = run_linear_probe(cfg)
    assert calls["n"] == 0 and second["features_from_cache"]  # the backbone never ran
    assert second["grid"] == first["grid"]
    from sslvit.eval import knn_probe  # the k-NN probe reads the same cache

    monkeypatch.setattr(knn_probe, "extract_features", counting)
    knn = knn_probe.run_knn_probe(knn_probe.KNNProbeConfig(ckpt=str(run), ks=(5,), baselines=False,
                                                           picture_queries=0))
    assert calls["n"] == 0 and 0 <= knn["results"]["pretrained"][5]["top1"] <= 100
    run_linear_probe(dataclasses.replace(cfg, recipe="avg"))  # another recipe: a miss
    assert calls["n"] == 2
    state = load_file(str(run / "backbone.safetensors"))  # another checkpoint at the same path: a miss
    state["norm.weight"] = state["norm.weight"] * 2
    save_file(state, str(run / "backbone.safetensors"))
    calls["n"] = 0
    third = run_linear_probe(cfg)
    assert calls["n"] == 2 and not third["features_from_cache"]


def test_table_names_the_top_n_column_by_the_n_it_uses():
    from sslvit.eval.linear_probe import format_report

    row = {"lr": 1e-3, "weight_decay": 0.0, "lr_scaled": 1e-3, "holdout_top1": 90.0, "val_top1": 88.0, "val_top5": 99.0}
    report = {"ckpt": "runs/x/backbone.safetensors", "recipe": "cls", "head": "linear", "optimizer": "sgd",
              "epochs": 1, "feature_dim": 8, "num_train": 9, "num_holdout": 1, "num_val": 3,
              "features_from_cache": False, "best": row, "best_index": 0, "grid": [row]}
    assert "val top-3" in format_report({**report, "top_n": 3}) and "top-5" not in format_report({**report, "top_n": 3})
    assert "val top-5" in format_report({**report, "top_n": 5})


def test_pixels_recipe_is_the_raw_pixel_baseline_through_the_same_heads(tmp_path, image_folder, fresh_accelerate,
                                                                        monkeypatch):
    import json

    from sslvit.eval import linear_probe
    from sslvit.eval.linear_probe import LinearProbeConfig, run_linear_probe
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining

    run = run_pretraining(MAERunConfig, "mae", argv=[*TINY_MAE, "--data", str(image_folder),
                                                     "--out", str(tmp_path / "run")])

    def no_backbone(*args, **kwargs):
        raise AssertionError("the pixel baseline ran the backbone")

    monkeypatch.setattr(linear_probe, "extract_features", no_backbone)
    report = run_linear_probe(LinearProbeConfig(ckpt=str(run), recipe="pixels", head="mae", epochs=30,
                                                lrs=(0.1, 1.0), batch_size=16))
    assert report["feature_dim"] == 3 * 16 * 16  # every pixel of the 16 px image, nothing pooled
    assert report["best"]["val_top1"] > 90  # the fixture's classes differ by brightness: pixels separate them
    assert json.loads((run / "linear_pixels.json").read_text())["recipe"] == "pixels"
    assert not (run / "linear.json").exists()  # the backbone's own result is not overwritten by the baseline


def test_baselines_are_the_random_init_twin_and_raw_pixels_through_the_same_grid(tmp_path, image_folder,
                                                                                fresh_accelerate, monkeypatch):
    """--baselines true: the grid sees, for each baseline, the very features the probe sees run on
    its own on a run folder holding the seeded random-init backbone of the run's shape, and with
    --recipe pixels; each baseline row is that run's best."""
    import dataclasses
    import shutil

    from sslvit.eval import linear_probe
    from sslvit.eval.linear_probe import LinearProbeConfig, format_report, run_linear_probe
    from sslvit.models.export import export_backbone, read_backbone_config
    from sslvit.models.vit import build_backbone
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining

    seen = []  # (train features, val features) of every grid the probe trains
    real_fit = linear_probe._fit_grid

    def recording(cfg, passes, clean_x, val_x, val_y, device, parts=1):
        seen.append((passes[0][0], val_x))
        return real_fit(cfg, passes, clean_x, val_x, val_y, device, parts)

    monkeypatch.setattr(linear_probe, "_fit_grid", recording)
    run = run_pretraining(MAERunConfig, "mae", argv=[*TINY_MAE, "--data", str(image_folder),
                                                     "--out", str(tmp_path / "run")])
    cfg = LinearProbeConfig(ckpt=str(run), recipe="avg", head="mae", epochs=5, lrs=(0.01, 0.1, 1.0), batch_size=16,
                            seed=3, baselines=True)
    report = run_linear_probe(cfg)
    assert set(report["baselines"]) == {"random_init", "raw_pixels"} and len(seen) == 3

    twin = tmp_path / "twin"  # the random-init backbone written out, as benchmarks/quality.py does
    twin.mkdir()
    bcfg = read_backbone_config(run / "backbone.safetensors")
    torch.manual_seed(3)
    export_backbone(build_backbone(bcfg), bcfg, twin)
    shutil.copy(run / "config.yaml", twin / "config.yaml")
    alone = run_linear_probe(dataclasses.replace(cfg, ckpt=str(twin), baselines=False))
    pixels = run_linear_probe(dataclasses.replace(cfg, recipe="pixels", baselines=False))
    (pre, rand, pix), (twin_seen, pix_seen) = seen[:3], seen[3:]
    assert not torch.allclose(pre[1], rand[1])  # the baseline is not the pretrained backbone again
    for got, want in ((rand, twin_seen), (pix, pix_seen)):
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    assert report["baselines"]["random_init"] == alone["best"]
    assert report["baselines"]["raw_pixels"] == pixels["best"]
    table = format_report(report)
    assert "random_init" in table and "raw_pixels" in table
    with pytest.raises(ValueError, match="pixels recipe is itself a baseline"):
        run_linear_probe(dataclasses.replace(cfg, recipe="pixels"))


def test_default_grid_reaches_higher_for_the_batchnorm_head_and_lrs_still_wins():
    dinov2 = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)  # DINOv2's eval grid
    assert build_config(LinearProbeConfig, ["--head", "linear"]).grid_lrs() == dinov2
    assert build_config(LinearProbeConfig, ["--head", "mae"]).grid_lrs() == dinov2 + (0.2, 0.5, 1.0, 2.0)
    assert build_config(LinearProbeConfig, ["--head", "mae", "--lrs", "[0.3, 3]"]).grid_lrs() == (0.3, 3.0)
    with pytest.raises(ValueError, match="lrs and weight_decays need at least one value"):
        LinearProbeConfig(lrs=()).validate()


def test_blocks_features_are_every_blocks_cls_and_mean_patch_token_before_any_norm():
    """BEiT's linear protocol (run_linear_eval.py on get_intermediate_layers): per block, the raw block
    output's cls token and mean patch token, side by side; read here from hooks on the blocks."""
    from sslvit.models.backbone_config import BackboneConfig
    from sslvit.models.vit import build_backbone

    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(size="tiny", depth=3, patch_size=4, img_size=16)).eval()
    with torch.no_grad():  # a norm that is not the identity: features taken after it would differ
        model.norm.weight.mul_(3.0).add_(0.5)
    outputs = []
    hooks = [blk.register_forward_hook(lambda mod, inp, out: outputs.append(out)) for blk in model.blocks]
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(imgs)
        feats = model.features(imgs, pool="blocks")
    for h in hooks:
        h.remove()
    want = torch.cat([torch.cat([o[:, 0], o[:, 1:].mean(1)], dim=-1) for o in outputs[:3]], dim=-1)
    assert feats.shape == (2, 3 * 2 * model.embed_dim)
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-5)


def test_blocks_recipe_fits_a_grid_per_block_and_reports_the_best_block_on_held_out():
    from sslvit.eval.linear_probe import _fit_grid, format_report

    (a, b), y = _data(n=120, dim=6, classes=3, seed=1)
    noise = torch.randn(120, 6, generator=torch.Generator().manual_seed(2))
    x = torch.cat([noise, a, noise.flip(0)], dim=1)  # block 2 alone holds the classes
    cfg = LinearProbeConfig(lrs=(0.01, 0.1), epochs=20, batch_size=16, holdout_fraction=0.25)
    rows, best, n_hold = _fit_grid(cfg, [(x, y)], x, x, y, "cpu", parts=3)
    assert [r["block"] for r in rows] == [1, 1, 2, 2, 3, 3] and rows[best]["block"] == 2
    assert rows[best]["holdout_top1"] == max(r["holdout_top1"] for r in rows)
    for part in range(3):  # each block's heads are the grid trained on that block's columns alone
        cols = slice(6 * part, 6 * (part + 1))
        alone, _, _ = _fit_grid(cfg, [(x[:, cols], y)], x[:, cols], x[:, cols], y, "cpu")
        assert [r["val_top1"] for r in alone] == [r["val_top1"] for r in rows[2 * part:2 * part + 2]]
    report = {"ckpt": "runs/x/backbone.safetensors", "recipe": "blocks", "head": "linear", "optimizer": "sgd",
              "epochs": 20, "feature_dim": 18, "num_train": 90, "num_holdout": n_hold, "num_val": 120,
              "features_from_cache": False, "best": rows[best], "best_index": best, "grid": rows}
    table = format_report(report)
    assert table.count("\n     1") == table.count("\n     2") == table.count("\n     3") == 1  # a row per block
    assert "(block 2, lr" in table


def test_aug_passes_crop_at_the_asked_scale_and_the_report_says_so(tmp_path, image_folder, fresh_accelerate,
                                                                    monkeypatch):
    from sslvit.eval import linear_probe
    from sslvit.eval.linear_probe import format_report, run_linear_probe
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining

    run = run_pretraining(MAERunConfig, "mae", argv=[*TINY_MAE, "--data", str(image_folder),
                                                     "--out", str(tmp_path / "run")])
    scales = []
    real = linear_probe.mae_train_transform

    def recording(size, scale, hflip):
        scales.append(scale)
        return real(size, scale=scale, hflip=hflip)

    monkeypatch.setattr(linear_probe, "mae_train_transform", recording)
    report = run_linear_probe(LinearProbeConfig(ckpt=str(run), recipe="pixels", epochs=2, lrs=(0.1,), batch_size=16,
                                                aug_passes=2, crop_scale=(0.5, 1.0)))
    assert scales == [(0.5, 1.0), (0.5, 1.0)] and report["aug_passes"] == 2
    assert "on 2 augmented passes" in format_report(report)
