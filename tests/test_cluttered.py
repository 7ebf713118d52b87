"""The embedded 'cluttered' set (digits drawn among clutter on a 32 px canvas) and the recipe a
run picks from its data."""
import numpy as np
import pytest
from PIL import Image

from sslvit.data.cluttered import CANVAS, COPIES, build, cluttered_split, parse_spec
from sslvit.data.dataset import build_dataset, is_embedded
from sslvit.data.digits import NUM_VAL
from sslvit.data.shape import DataShape, data_shape
from sslvit.train.data_recipe import fitted_small_recipe, preset_for


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache" / "sslvit"))


def test_split_sizes_labels_and_cache(tmp_path):
    imgs, labels = cluttered_split("val", 32)
    assert len(imgs) == NUM_VAL * COPIES["val"] and imgs[0].size == (CANVAS, CANVAS) and imgs[0].mode == "RGB"
    assert sorted(set(labels)) == list(range(10))
    cached = list((tmp_path / "cache" / "sslvit").glob("cluttered-val-*.npz"))
    assert len(cached) == 1
    again, labels2 = cluttered_split("val", 32)  # read back from the cache: the same pixels
    assert labels2 == labels and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs[:20], again))
    small, _ = cluttered_split("val", 16)
    assert small[0].size == (16, 16)


def test_a_cache_folder_that_cannot_be_written_is_a_warning_and_the_set_is_built_in_memory(tmp_path, monkeypatch):
    """A read-only or full home used to stop every run on the set with the cache's OSError."""
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "a_file"))  # a file where the cache's folder would be
    with pytest.warns(UserWarning, match=rf"^the cluttered set could not be cached in '{tmp_path / 'a_file'}' "
                                         r"\(.*\); it is built again at each run \(set SSLVIT_CACHE"):
        imgs, labels = cluttered_split("val", 32)
    built, built_labels = build("val", 0, 1.0)
    assert labels == built_labels.tolist() and np.array_equal(np.asarray(imgs[7]), built[7])


@pytest.mark.parametrize("sslvit_cache, xdg, folder", [
    ("mine", "xdg", "mine"), (None, "xdg", "xdg/sslvit"), (None, None, "home/.cache/sslvit"),
    ("", "", "home/.cache/sslvit"),
])
def test_both_caches_live_in_one_folder_that_sslvit_cache_moves_else_xdg_cache_home(sslvit_cache, xdg, folder,
                                                                                   tmp_path, monkeypatch):
    """The set's cache followed XDG_CACHE_HOME and the precision timings SSLVIT_CACHE, so neither
    variable moved both. Unset or empty variables fall back as the XDG spec says."""
    from sslvit.data.cluttered import cache_file
    from sslvit.train import precision

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in (("SSLVIT_CACHE", sslvit_cache), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(tmp_path / value) if value else "")
    assert cache_file("val", 0, 1.0).parent == tmp_path / folder
    assert precision.cache_file() == tmp_path / folder / "precision.json"


def test_variants_differ_and_the_generator_is_seeded():
    a, la = build("val", 0, 1.0)
    b, lb = build("val", 0, 1.0)
    c, _ = build("val", 1, 1.0)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    # strength 0: no clutter, no rotation, no texture: only the digit on a flat colour
    flat, _ = build("val", 0, 0.0)
    assert np.abs(flat.astype(float) - a.astype(float)).mean() > 1.0


def test_pose_rng_decides_the_glyph_alone(monkeypatch):
    """draw(..., pose_rng=): the digit's size, rotation and place follow pose_rng's state alone, the
    background, colour and clutter follow rng (benchmarks/dino_redraw.py keeps a pose per sample)."""
    from sslvit.data import cluttered

    pool, _ = cluttered.sources("val")
    pasted = []  # (top, left, alpha) of every paste; the glyph is the last one of a drawing
    real = cluttered._paste
    monkeypatch.setattr(cluttered, "_paste", lambda canvas, alpha, colour, top, left:
                        (pasted.append((int(top), int(left), alpha.copy())), real(canvas, alpha, colour, top, left)))

    def glyph_and_image(nuisance_seed, pose_seed):
        pose = None if pose_seed is None else np.random.default_rng(pose_seed)
        img = cluttered.draw(pool[3], pool, np.random.default_rng(nuisance_seed), 1.0, pose_rng=pose)
        return pasted[-1], img

    (t1, l1, a1), img1 = glyph_and_image(1, 7)
    (t2, l2, a2), img2 = glyph_and_image(2, 7)  # another background, colour and clutter; the same pose
    assert (t1, l1) == (t2, l2) and np.array_equal(a1, a2) and not np.array_equal(img1, img2)
    glyphs = {(t, l, a.shape) for (t, l, a), _ in (glyph_and_image(1, s) for s in range(8))}
    assert len(glyphs) > 1  # another pose generator: another pose
    _, img3 = glyph_and_image(5, None)  # no pose_rng: everything from rng, as build() draws
    assert np.array_equal(img3, cluttered.draw(pool[3], pool, np.random.default_rng(5), 1.0))


def test_val_digits_are_not_drawn_in_train():
    """The split is by source digit: a val image's digit is no train image's (both come from the
    digits' own fixed split), so the k-NN cannot find a redrawn copy of its query."""
    from sklearn.datasets import load_digits

    order = np.random.default_rng(0).permutation(len(load_digits().target))
    assert len(set(order[:NUM_VAL]) & set(order[NUM_VAL:])) == 0
    train, _ = cluttered_split("train", 32)
    assert len(train) == (len(order) - NUM_VAL) * COPIES["train"]


def test_specs_and_their_errors():
    assert parse_spec("cluttered") == {"seed": 0, "strength": 1.0}
    assert parse_spec("cluttered:seed=2,strength=1.5") == {"seed": 2, "strength": 1.5}
    assert parse_spec("digits") is None and parse_spec("/data/cluttered") is None
    assert is_embedded("cluttered:seed=1") and is_embedded("digits") and not is_embedded("/tmp/x")
    with pytest.raises(ValueError, match="option 'colour' is unknown"):
        parse_spec("cluttered:colour=1")
    with pytest.raises(ValueError, match="is not a number"):
        parse_spec("cluttered:seed=x")
    ds = build_dataset("cluttered:seed=3", "val", 32)
    assert ds.labelled and len(ds) == NUM_VAL * COPIES["val"]


def _folder(root, n, side, classes=("a", "b")):
    for i in range(n):
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (side, side + 5), (i % 255, 0, 0)).save(d / f"{i:04d}.png")
    return root


def test_data_shape_of_a_folder_counts_the_images_pretraining_reads(tmp_path):
    # without train/ and val/: the 32 of 40 left when the probes' 20% is held out (it said 40)
    shape = data_shape(str(_folder(tmp_path / "imgs", 40, 28)))
    assert shape == DataShape(count=32, side=28, labelled=True)
    assert len(build_dataset(str(tmp_path / "imgs"), "train", 28)) == 32
    _folder(tmp_path / "split" / "train", 30, 20), _folder(tmp_path / "split" / "val", 10, 20)
    assert data_shape(str(tmp_path / "split")) == DataShape(count=30, side=20, labelled=True)


PRESETS = {"digits": {"model": {"img_size": 16}},
           "cluttered": {"out": "runs/x-cluttered", "model": {"size": "tiny", "patch_size": 8, "img_size": 32},
                         "crops": {"local_size": 16}, "train": {"epochs": 10, "knn_every": 2, "batch_size": 64}}}


def test_the_shipped_presets_fit_a_small_folder(tmp_path):
    from sslvit.train.entry import load_presets

    folder = str(_folder(tmp_path / "imgs", 12, 20))
    for objective in ("mae", "beit", "dino", "ibot", "mae_dino"):
        recipe, why = preset_for(load_presets(objective), folder)
        assert int(recipe["model"]["img_size"]) == 32 and "small data" in why, objective
        # a line, not a key; DINO and iBOT learn from an MAE start, which they train first (12 images: 4x the epochs)
        assert "note" not in recipe and ("--start none" in why) == (objective in ("dino", "ibot")), objective
        assert recipe.get("start") == ("mae:132" if objective in ("dino", "ibot") else None), objective


def test_recipe_chosen_by_the_data(tmp_path):
    recipe, why = preset_for(PRESETS, "digits")
    assert recipe == PRESETS["digits"] and "'digits' preset" in why
    recipe, why = preset_for(PRESETS, "cluttered:seed=1")
    assert recipe is PRESETS["cluttered"]
    noted = {**PRESETS, "cluttered": {**PRESETS["cluttered"], "note": "start it from X"}}
    recipe, why = preset_for(noted, "cluttered")
    assert "note" not in recipe and why.splitlines()[1] == "note: start it from X"
    small = _folder(tmp_path / "small", 30, 40)  # 30 labelled 40 px images
    recipe, why = preset_for(PRESETS, str(small))
    assert recipe["model"] == {"size": "tiny", "patch_size": 8, "img_size": 32} and "out" not in recipe
    assert recipe["train"]["epochs"] == 40 and recipe["train"]["knn_every"] == 0  # 4x (capped) for 30 images
    # 24: the 30 less the 6 the probes hold out, which pretraining never reads
    assert "small data (24 training images, short side 40 px" in why and recipe["train"]["batch_size"] == 8
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for i in range(5):
        Image.new("RGB", (64, 80)).save(unlabelled / f"{i}.png")
    recipe, _ = preset_for(PRESETS, str(unlabelled))
    assert recipe["model"]["img_size"] == 64 and recipe["model"]["patch_size"] == 16
    assert recipe["crops"]["local_size"] == 32 and recipe["train"]["knn_every"] == 0
    assert PRESETS["cluttered"]["model"]["img_size"] == 32  # the preset itself is untouched


def test_batched_crops_stay_only_for_images_near_the_crop_size():
    """DINO's crops made a batch at a time are not low-passed when shrunk: a folder of large images
    gets the per-image crops, one of small images keeps the preset's batched crops."""
    from sslvit.train.entry import load_presets

    dino = load_presets("dino")["cluttered"]
    assert dino["crops"]["batched"] == "true"  # preset values stay text until the config types them
    for side, batched in [(32, "true"), (40, "true"), (64, "true"), (96, "true"), (97, "false"), (224, "false")]:
        assert fitted_small_recipe(dino, DataShape(9_000, side, False))["crops"]["batched"] == batched, side
    assert dino["crops"]["batched"] == "true"  # the preset itself is untouched


def test_the_beit_codebook_and_its_pooling_follow_the_folder():
    """BEiT's pixel codes pool the patch as the recipe scales it, and a small folder gets a codebook
    that k-means can fit: at most one code per 39 of the patches it is fitted on."""
    beit = {"model": {"img_size": "32", "patch_size": "8"}, "train": {},
            "tokenizer": {"vocab": "512", "fit_images": "1500", "pixel_size": "4"}}
    large = fitted_small_recipe(beit, DataShape(9_000, 64, False))  # 1,500 x 16 patches: 46 a code
    assert large["tokenizer"] == {"vocab": 512, "fit_images": "1500", "pixel_size": 8}
    assert large["model"] == {"img_size": 64, "patch_size": 16}
    assert fitted_small_recipe(beit, DataShape(600, 32, False))["tokenizer"]["vocab"] == 128  # 9,600 / 39 = 246
    assert fitted_small_recipe(beit, DataShape(16, 20, False))["tokenizer"]["vocab"] == 4  # 256 / 39 = 6
    assert beit["tokenizer"]["vocab"] == "512"  # the preset itself is untouched


def test_the_recipe_line_names_a_depth_that_is_not_the_sizes():
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.data_recipe import summary
    from sslvit.train.entry import run_config

    def line(*keys):
        return summary(run_config(MAERunConfig, "mae", argv=["--data", "cluttered", "--out", "unused", *keys]))

    assert "this run: ViT-tiny/8 at 32 px" in line() and "this run: ViT-tiny/8 at 32 px" in line("--model.depth", "12")
    assert "this run: ViT-tiny/8, 6 blocks at 32 px" in line("--model.depth", "6")
    assert "ViT-small/8, 18 blocks of 2 parallel branches at" in line("--model.size", "small", "--model.depth", "18",
                                                                      "--model.parallel", "2")


def test_large_data_keeps_the_reference_defaults():
    big = DataShape(count=50_000, side=224, labelled=False)
    assert fitted_small_recipe(PRESETS["cluttered"], DataShape(9_000, 224, False))["train"]["epochs"] == 10
    import sslvit.train.data_recipe as dr

    orig = dr.data_shape
    try:
        dr.data_shape = lambda data: big
        recipe, why = preset_for(PRESETS, "/")
    finally:
        dr.data_shape = orig
    assert recipe is None and "reference defaults (50,000 training images, short side 224 px" in why


@pytest.mark.parametrize("objective", ["dino", "beit"])
def test_a_folder_of_small_images_trains_with_no_keys(tmp_path, objective, capsys):
    """The first DINO and BEiT runs on 20 px images used to stop at 'local_size 96 must be smaller
    than model.img_size' / 'vocab 8192 is larger than the patches': the recipe now follows the data."""
    import yaml

    from sslvit.recipes.beit import BEiTRunConfig
    from sslvit.recipes.dino import DINORunConfig
    from sslvit.train.entry import run_pretraining

    folder = _folder(tmp_path / "imgs", 16, 20)
    out = tmp_path / objective
    cls = {"dino": DINORunConfig, "beit": BEiTRunConfig}[objective]
    run_pretraining(cls, objective, argv=["--data", str(folder), "--out", str(out), "--train.epochs", "1",
                                         "--model.depth", "1", "--train.precision", "fp32"])
    printed = capsys.readouterr().out
    assert "recipe: small data (13 training images, short side 20 px" in printed  # 16 less the probes' 3
    assert "this run: ViT-tiny/8, 1 block at 32 px, 1 epoch of batch" in printed  # --model.depth 1, not the size's 12
    assert ("\nnote: DINO learns here from an MAE run's weights" in printed) == (objective == "dino")
    # DINO's recipe trains its MAE start first, 33 epochs scaled as its own (16 images: 4x), in the same backbone
    assert ("start: MAE's recipe for this data, 132 epochs, trained first in" in printed) == (objective == "dino")
    assert (out / "start-mae132" / "backbone.safetensors").is_file() == (objective == "dino")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["model"]["img_size"], cfg["model"]["patch_size"],
            cfg["train"]["batch_size"]) == (32, 8, 4)  # at most half of the 13
    assert (out / "backbone.safetensors").is_file()


def test_pixels_are_not_enough_but_the_digits_are_there():
    """Issue 16's design bound: raw-pixel k-NN (k = 20) on the default set is at most 80, and far
    above chance (10): the digits are real and findable, the nuisances hide them from pixels."""
    from sslvit.data.transforms import eval_transform
    from sslvit.eval.features import raw_pixel_features
    from sslvit.eval.knn import knn_classify

    train, val = (build_dataset("cluttered", split, 32, transform=eval_transform(32)) for split in ("train", "val"))
    (xt, yt), (xv, yv) = raw_pixel_features(train), raw_pixel_features(val)
    top1 = knn_classify(xt.numpy(), yt.numpy(), xv.numpy(), yv.numpy(), ks=(20,))[20]["top1"]
    print(f"raw-pixel k-NN top-1 on cluttered: {top1:.1f}")
    assert 30.0 < top1 <= 80.0


def test_a_folder_of_images_four_times_the_runs_side_is_pointed_at_smaller_shards(tmp_path):
    """A run reads and decodes each file at every step: at 4x the side it trains at, the recipe's note
    names the shard command that stores them smaller once (for shards of such images, writes them again);
    below that, no note."""
    big, small = _folder(tmp_path / "big", 10, 256), _folder(tmp_path / "small", 10, 255)  # trained at 64 px
    _, why = preset_for(PRESETS, str(big))
    assert why.splitlines()[1] == ("note: the images' short side is 256 px and this recipe trains at 64 px, and "
                                   f"each file is read and decoded at every step; `python -m sslvit.data.shards {big} "
                                   "SHARDS --max-side 256` stores them at 256 px once, and --data SHARDS reads those")
    assert len(preset_for(PRESETS, str(small))[1].splitlines()) == 1
    from sslvit.data.shards import write_shards

    write_shards(big, tmp_path / "shards", progress=False)  # the images as they are: the same note, to write again
    assert preset_for(PRESETS, str(tmp_path / "shards"))[1].splitlines()[1] == (
        "note: the shards' images have a short side of 256 px and this recipe trains at 64 px, and each is decoded "
        "at every step; `python -m sslvit.data.shards FOLDER SHARDS --max-side 256` writes them again from their "
        "folder at 256 px, and --data SHARDS reads those")
    write_shards(big, tmp_path / "stored", progress=False, max_side=255)
    write_shards(small, tmp_path / "small_shards", progress=False)
    for shards in ("stored", "small_shards"):  # stored small, or small to begin with: no note
        assert len(preset_for(PRESETS, str(tmp_path / shards))[1].splitlines()) == 1


def test_a_folder_where_no_sampled_header_reads_is_not_said_to_be_0_px(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(b"not a jpeg")
    recipe, why = preset_for(PRESETS, str(root))
    assert recipe is not None and "0 px" not in why
    assert why.startswith("recipe: small data (5 training images, none of those sampled readable: no size to go by)")
