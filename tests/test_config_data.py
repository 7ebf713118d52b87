import pytest
from PIL import Image

from sslvit.config import ConfigError, build_config
from sslvit.data.dataset import build_dataset
from sslvit.data.folder import DataError
from sslvit.data.transforms import eval_transform
from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import load_presets


def test_defaults_are_the_reference_and_digits_gets_its_preset(tmp_path):
    ref = build_config(MAERunConfig, ["--data", str(tmp_path)], presets=load_presets("mae"))
    assert (ref.model.size, ref.model.patch_size, ref.model.img_size) == ("base", 16, 224)
    assert ref.mae.mask_ratio == 0.75 and ref.mae.decoder_shape(768) == (512, 8, 16)  # MAE's decoder for ViT-B
    assert ref.mae.decoder_shape(1024) == (512, 8, 16) and ref.mae.decoder_shape(192) == (192, 4, 6)
    assert ref.train.blr == 1.5e-4 and ref.train.betas == (0.9, 0.95) and ref.train.weight_decay == 0.05
    demo = build_config(MAERunConfig, [], presets=load_presets("mae"))
    assert demo.data == "digits" and demo.model.size == "tiny"
    assert demo.model.init_values == 0.1  # without LayerScale it fine-tuned 5.7 points below random weights there
    small = build_config(MAERunConfig, ["--data", "cluttered"], presets=load_presets("mae"))
    assert small.model.init_values == 0.1  # LayerScale: what keeps MAE's shared vector from growing there
    # the sweep's pick (docs/results.md, "MAE's cluttered preset since 2026-12-04"): MAE's own ratio, the cheaper
    # steps spent on epochs
    assert (small.mae.mask_ratio, small.train.blr, small.train.epochs) == (0.75, 3e-3, 55)
    # the 64-wide decoder: 0.78x the step of a 128-wide one, the same linear probe within its seed spread
    assert small.mae.decoder_shape(192) == (64, 2, 2)
    assert build_config(MAERunConfig, ["--data", "cluttered", "--model.init_values", "null"],
                        presets=load_presets("mae")).model.init_values is None  # still the user's to turn off


def test_dino_small_recipe_uses_sincos_positions_and_layerscale():
    from sslvit.recipes.dino import DINORunConfig
    from sslvit.train.entry import run_config

    small = run_config(DINORunConfig, preset="dino", argv=["--data", "cluttered"])  # as pretrain/dino.py builds it
    # a learned table that starts random fine-tunes ~10 points lower on small data (docs/results.md, issue 16)
    assert small.model.pos_embed == "sincos" and small.model.init_values == 0.1
    assert small.model.dynamic_img_size  # the local crops still resize the table
    # chosen from an MAE start (docs/results.md, "DINO on an MAE start"), which the recipe trains first
    assert (small.crops.grayscale_p, small.train.blr) == (1.0, 4e-3) and small.start == "mae:33"
    # a short run's schedules: lr and the teacher's momentum held, the last layer free from the start
    assert (small.train.lr_schedule, small.dino.momentum_teacher, small.dino.momentum_teacher_end,
            small.dino.freeze_last_layer) == ("constant", 0.98, 0.98, 0)
    # 15 epochs of batched crops from a 33-epoch MAE start (docs/results.md, "Fourteen epochs",
    # "Fifteen and thirteen epochs"); the online k-NN every 2nd epoch pays for the 15th
    assert small.train.epochs == 15 and small.train.knn_every == 2 and small.crops.batched and small.start == "mae:33"
    # batch 32: twice the steps an epoch for about the same time; it learns faster per epoch
    # (docs/results.md, "Batch 32")
    assert small.train.batch_size == 32
    ref = run_config(DINORunConfig, preset="dino", argv=["--data", "cluttered", "--model.pos_embed", "learned"])
    assert ref.model.pos_embed == "learned"  # the reference's choice stays one key away


def test_dino_digits_preset_is_in_maes_digits_shape_and_names_its_start():
    from sslvit.recipes.dino import DINORunConfig
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_config

    dino = run_config(DINORunConfig, preset="dino", argv=[])
    mae = run_config(MAERunConfig, preset="mae", argv=[])
    # MAE's digits run (the recipe's start) must load: the weights' shape is the same (drop path and the crops'
    # dynamic size are not weights); from it DINO fine-tunes above random weights there, from random weights it did not
    weights = ("size", "patch_size", "img_size", "stem", "stem_norm", "pos_embed", "depth", "parallel", "init_values",
               "reg_tokens")
    assert {k: getattr(dino.model, k) for k in weights} == {k: getattr(mae.model, k) for k in weights}
    assert dino.start == "mae" and str(dino.start_run().out) == "runs/dino-digits/start-mae"  # trained first


def test_ibot_cluttered_preset_is_dinos_short_run_from_the_same_mae_start():
    from sslvit.recipes.dino import DINORunConfig
    from sslvit.recipes.ibot import IBOTRunConfig
    from sslvit.train.entry import run_config

    ibot = run_config(IBOTRunConfig, preset="ibot", argv=["--data", "cluttered"])
    dino = run_config(DINORunConfig, preset="dino", argv=["--data", "cluttered"])
    assert ibot.model == dino.model  # MAE's shape: --init from the MAE run loads
    for section, keys in [("dino", ("momentum_teacher", "momentum_teacher_end", "freeze_last_layer", "koleo_weight")),
                          ("train", ("blr", "lr_schedule", "batch_size")), ("crops", ("grayscale_p", "batched"))]:
        for key in keys:
            assert getattr(getattr(ibot, section), key) == getattr(getattr(dino, section), key), (section, key)
    # an iBOT step costs 1.1-1.2x DINO's: 13 epochs take the budget where DINO runs 15
    # (docs/results.md, "iBOT with DINO's short-run keys", "Fifteen and thirteen epochs")
    assert ibot.train.epochs == 13 and ibot.train.knn_every == 2 and ibot.start == dino.start == "mae:33"


def test_yaml_then_command_line_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  betas: [0.8, 0.9]\nmodel:\n  size: small\n")
    cfg = build_config(MAERunConfig, ["--config", str(f), "--train.epochs", "9", "mae.mask_ratio=0.6", "--resume"])
    assert cfg.train.epochs == 9 and cfg.train.betas == (0.8, 0.9) and cfg.model.size == "small"
    assert cfg.mae.mask_ratio == 0.6 and cfg.resume is True


@pytest.mark.parametrize("argv, match", [
    (["--train.epoch", "3"], "Did you mean 'train.epochs'"),
    (["--train.epochs", "many"], "must be an integer"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    (["--train", "3"], "is a section"),
])
def test_bad_config_is_one_clear_sentence(argv, match):
    with pytest.raises(ConfigError, match=match):
        build_config(MAERunConfig, argv)


def test_a_yaml_value_and_command_line_keys_under_it_are_refused_not_one_dropped(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'train' is given both as the value \['1', '2'\] and by keys under it "
                                          r"\('train.epochs'\); give it one way"):
        build_config(MAERunConfig, ["--config", str(f), "--train.epochs", "3"])
    f.write_text("model:\n  size: 3\n")
    with pytest.raises(ConfigError, match=r"'model.size' is given both as the value '3' and by keys under it"):
        build_config(MAERunConfig, ["--config", str(f), "--model.size.x", "3"])


def _write_images(root, n=6, size=20):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size, size), (i * 20, 0, 0)).save(root / c / f"{i}.png")


def test_folder_labels_from_subfolders_and_unreadable_images_are_skipped(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    ds = build_dataset(str(tmp_path), "all", 16, transform=eval_transform(16))
    assert ds.classes == ["cat", "dog"] and len(ds) == 13
    broken = [i for i, p in enumerate(ds.items) if p.name == "broken.png"][0]
    with pytest.warns(UserWarning, match="broken.png"):
        x, y, skipped = ds[broken]
    assert skipped == 1 and x.shape == (3, 16, 16) and y == ds.labels[(broken + 1) % len(ds)]
    val, train = build_dataset(str(tmp_path), "val", 16), build_dataset(str(tmp_path), "train", 16)
    assert len(val) + len(train) == 13 and not set(val.items) & set(train.items)
    (tmp_path / "dog" / "broken2.png").write_bytes(b"not a png either")  # the next file: passed over, unnamed
    ds = build_dataset(str(tmp_path), "all", 16)
    with pytest.warns(UserWarning) as named:
        assert ds[broken][2] == 1
    own = f"Skipping unreadable image '{ds.items[broken]}' (UnidentifiedImageError)."
    assert [str(w.message) for w in named] == [own]


def test_missing_or_empty_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(str(tmp_path / "nope"), "all", 16)
    with pytest.raises(DataError, match="holds no images"):
        build_dataset(str(tmp_path), "all", 16)
    (tmp_path / "phone" / "2024").mkdir(parents=True)
    (tmp_path / "phone" / "2024" / "IMG_0001.HEIC").write_bytes(b"ftypheic")  # an iPhone's export
    with pytest.raises(DataError, match=r"holds HEIC photos \('IMG_0001.HEIC'\), which Pillow cannot read; convert "
                                        r"them to JPEG first"):
        build_dataset(str(tmp_path / "phone"), "all", 16)


def test_digits_is_real_fixed_split():
    train, val = build_dataset("digits", "train", 32), build_dataset("digits", "val", 32)
    assert len(train) == 1500 and len(val) == 297 and sorted(set(val.labels)) == list(range(10))
    assert train[0][0].size == (32, 32)
    assert build_dataset("digits", "val", 32).labels == val.labels


def test_a_large_jpeg_in_a_folder_decodes_at_a_scale_still_four_times_the_crops_and_shows_the_same_picture(tmp_path):
    """``read_for``: a 1600 x 1200 JPEG read for 64 px crops decodes at 1/4 scale (400 x 300: short
    side >= 4 x 64), a PNG and a JPEG too small to shrink whole; the picture is the full decode's,
    resized: compared at 64 px against the full decode, as the crops see it."""
    import numpy as np
    from PIL import Image

    from sslvit.data.folder import load_rgb

    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    (tmp_path / "a").mkdir()
    smooth.save(tmp_path / "a" / "photo.jpg", quality=95)
    smooth.save(tmp_path / "a" / "photo.png")
    smooth.resize((400, 300)).save(tmp_path / "a" / "small.jpg", quality=95)
    ds = build_dataset(str(tmp_path), "all", 64)
    loaded = {p.name: ds[i][0] for i, p in enumerate(ds.items)}
    assert {k: v.size for k, v in loaded.items()} == {"photo.jpg": (400, 300), "photo.png": (1600, 1200),
                                                      "small.jpg": (400, 300)}
    whole = load_rgb(tmp_path / "a" / "photo.jpg")
    assert whole.size == (1600, 1200)  # read for no size: whole, as before

    def at_64(img):
        return np.asarray(img.resize((85, 64), Image.BICUBIC, reducing_gap=3.0), dtype=np.float64)
    assert np.abs(at_64(loaded["photo.jpg"]) - at_64(whole)).mean() < 1.0  # of 255
    from sslvit.data.shards import write_shards  # the same files as shards (their own bytes) read alike

    write_shards(tmp_path, tmp_path / "shards", val_fraction=0, progress=False)
    streamed = sorted(img.size for img, _, _ in build_dataset(str(tmp_path / "shards"), "train", 64))
    assert streamed == sorted(v.size for v in loaded.values())
