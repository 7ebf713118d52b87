"""Tokenizers: nearest-centroid encoding against brute force, fitting, save/load, usage, CLI."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sslvit.config import ConfigError
from sslvit.models import BackboneConfig, build_backbone
from sslvit.tokenizers import FeatureTokenizer, PixelTokenizer, load_tokenizer
from sslvit.tokenizers.__main__ import FitCommand, main as cli
from sslvit.tokenizers.tokenizer_config import TokenizerFitConfig
from sslvit.tokenizers.usage import codebook_usage, collapse_warnings


def _fitted_pixel(vocab=16, patch=8, pixel_size=4, n=12):
    tok = PixelTokenizer(vocab, patch, pixel_size)
    tok.fit([torch.randn(n, 3, 32, 32)], iters=5)
    return tok


def brute_force_pixel_ids(imgs, codebook, patch, pixel_size, eps):
    """Each patch cut out on its own, average-pooled to pixel_size, normalised by its own mean and
    (unbiased) variance + eps, then the code at the smallest squared distance, in float64."""
    B, C, H, W = imgs.shape
    k = patch // pixel_size
    ids = torch.empty(B, (H // patch) * (W // patch), dtype=torch.long)
    for b in range(B):
        for i in range(H // patch):
            for j in range(W // patch):
                p = imgs[b, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].double()
                v = p.reshape(C, pixel_size, k, pixel_size, k).mean((2, 4)).flatten()
                v = (v - v.mean()) / (v.var() + eps).sqrt()
                ids[b, i * (W // patch) + j] = ((codebook.double() - v) ** 2).sum(1).argmin()
    return ids


def test_pixel_encode_is_the_nearest_centroid_of_each_normalised_patch():
    tok = _fitted_pixel()
    imgs = torch.randn(3, 3, 32, 32)
    ids = tok.encode(imgs)
    assert ids.shape == (3, 16)
    assert torch.equal(ids, brute_force_pixel_ids(imgs, tok.codebook, 8, 4, tok.eps))
    mask = torch.rand(3, 16) < 0.4
    assert torch.equal(tok.encode(imgs, mask), ids[mask])  # masked-only encoding, tensor[mask] order
    picture = tok.draw(ids, imgs)  # each patch as its code's centroid with the patch's own mean and contrast
    assert picture.shape == (3, 3, 32, 32) and 0 <= picture.min() and picture.max() <= 1


def test_grey_pixel_encode_quantises_each_patchs_luma(tmp_path):
    """grey: the codes are fitted on, and assign, the patches' luma (0.299 R + 0.587 G + 0.114 B of
    the real pixels, as PIL's convert("L")), in ImageNet-normalised units so eps keeps its scale."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    w = torch.tensor([0.299, 0.587, 0.114])
    real = torch.rand(3, 3, 32, 32)  # pixels in [0, 1]
    imgs = (real - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    tok = PixelTokenizer(16, 8, 4, grey=True)
    tok.fit([imgs], iters=5)
    assert tok.codebook.shape == (16, 16)  # one channel of 4 x 4
    luma = (real * w.view(1, 3, 1, 1)).sum(1, keepdim=True) / (w * std).sum()
    assert torch.equal(tok.encode(imgs), brute_force_pixel_ids(luma, tok.codebook, 8, 4, tok.eps))
    back = load_tokenizer(tok.save(tmp_path / "grey.safetensors"))
    assert back.grey and torch.equal(back.encode(imgs), tok.encode(imgs))
    picture = tok.draw(tok.encode(imgs), imgs)  # grey codes drawn grey, with the patch's own luma range
    assert picture.shape == (3, 3, 32, 32) and torch.equal(picture[:, 0], picture[:, 2])
    assert 0 <= picture.min() and picture.max() <= 1


def test_feature_encode_is_the_cosine_nearest_code_of_the_teachers_patch_tokens():
    cfg = BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16)
    teacher = build_backbone(cfg)
    tok = FeatureTokenizer(8, teacher, cfg)
    tok.fit([torch.randn(16, 3, 16, 16)], iters=5)
    assert torch.allclose(tok.codebook.norm(dim=1), torch.ones(8), atol=1e-5)  # spherical k-means
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = F.normalize(teacher.eval().forward_features(imgs)[:, 1:].double(), dim=-1)
    assert torch.equal(tok.encode(imgs), (feats @ tok.codebook.double().T).argmax(-1))
    tok.train()  # a training loop's .train() never puts the teacher into train mode
    assert not tok.training and not tok.teacher.training
    picture = tok.draw(tok.encode(imgs), imgs)  # a colour per code, constant over each patch
    assert picture.shape == (2, 3, 16, 16) and 0 <= picture.min() and picture.max() <= 1
    assert torch.equal(picture[:, :, :4, :4], picture[:, :, :1, :1].expand(-1, -1, 4, 4))


def test_fit_never_gives_two_separated_patterns_one_code():
    """Images tiled from 3 distinct 4x4 patterns (+ small noise), 32 codes: k-means starts from
    data points, so (bar a 3 (2/3)^32 chance that a pattern gets no starting point) every code stays
    inside one pattern's cluster and every pattern gets codes of its own."""
    patterns = torch.randn(3, 3, 4, 4) * 2
    choice = torch.randint(0, 3, (40, 16))
    tiles = patterns[choice].flatten(2) + 0.01 * torch.randn(40, 16, 48)  # (B, N, C*P*P)
    imgs = F.fold(tiles.transpose(1, 2), (16, 16), 4, stride=4)
    tok = PixelTokenizer(32, 4, 8)  # pixel_size is capped at the patch size
    tok.fit([imgs], iters=10)
    ids = tok.encode(imgs)
    codes = [set(ids[choice == c].tolist()) for c in range(3)]
    assert all(codes) and not (codes[0] & codes[1] or codes[0] & codes[2] or codes[1] & codes[2])


def test_save_load_round_trip(tmp_path):
    tok = _fitted_pixel()
    tok.fit_info = {"data": "x"}
    path = tok.save(tmp_path / "tok.safetensors")
    back = load_tokenizer(path)
    assert isinstance(back, PixelTokenizer) and back.header() == tok.header()
    assert torch.equal(back.codebook, tok.codebook)
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(back.encode(imgs), tok.encode(imgs))

    cfg = BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16, init_values=0.1)
    feat = FeatureTokenizer(4, build_backbone(cfg), cfg, source="somewhere")
    feat.fit([torch.randn(4, 3, 16, 16)], iters=2)
    back = load_tokenizer(feat.save(tmp_path / "feat.safetensors"))
    assert isinstance(back, FeatureTokenizer) and back.teacher_cfg == cfg
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(back.encode(x), feat.encode(x))


def test_unusable_files_and_settings_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="vocab 64 is larger than the 48 patches"):
        PixelTokenizer(64, 4).fit([torch.randn(3, 3, 16, 16)])
    with pytest.raises(ConfigError, match="pixel_size 3 must divide the patch size 8"):
        PixelTokenizer(8, 8, pixel_size=3)
    with pytest.raises(ConfigError, match="--grey is for the pixel kind"):  # asked for on fit's command line
        FitCommand(kind="features", teacher="runs/x", grey=True).validate()
    TokenizerFitConfig(kind="features", teacher="runs/x", grey=True).validate()  # a run's recipe's: unused
    with pytest.raises(FileNotFoundError, match="No tokenizer at"):
        load_tokenizer(tmp_path / "none.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not an sslvit tokenizer"):
        load_tokenizer(tmp_path / "other.safetensors")


def test_usage_perplexity_and_collapse_warning():
    uniform = codebook_usage(torch.arange(64).repeat(10), 64)
    assert uniform["codes_used"] == 64 and abs(uniform["perplexity"] - 64) < 1e-9 and not collapse_warnings(uniform)
    two = codebook_usage(torch.tensor([0, 1] * 50), 64)
    assert abs(two["perplexity"] - 2) < 1e-9 and two["used_share"] == 2 / 64
    warnings = collapse_warnings(two)
    assert len(warnings) == 2 and "collapsed" in warnings[0] and "2 of 64" in warnings[1]
    skewed = codebook_usage(torch.cat([torch.zeros(1000, dtype=torch.long), torch.arange(64)]), 64)
    assert skewed["codes_used"] == 64 and skewed["perplexity"] < 6.4 and collapse_warnings(skewed)


def test_cli_fits_reports_usage_and_refuses_a_too_large_vocab(tmp_path, image_folder, capsys):
    out = tmp_path / "tok.safetensors"
    cli(["fit", "--kind", "pixel", "--data", str(image_folder), "--vocab", "8", "--img_size", "16",
         "--patch_size", "4", "--out", str(out), "--iters", "3", "--grey", "false"])
    printed = capsys.readouterr().out
    # the folder's training split: 48 of its 60 images, the 12 the probes hold out unseen, as in a BEiT run
    assert "768 patches of 48 images" in printed and "codebook usage" in printed and "perplexity" in printed
    tok = load_tokenizer(out)
    assert tok.vocab == 8 and tok.fit_info["usage"]["codes_used"] <= 8 and tok.fit_info["images"] == 48
    assert not tok.grey and tok.codebook.shape == (8, 48)
    cli(["fit", "--data", str(image_folder), "--vocab", "8", "--img_size", "16", "--patch_size", "4",
         "--out", str(tmp_path / "grey.safetensors"), "--iters", "3", "--grey", "true"])
    grey = load_tokenizer(tmp_path / "grey.safetensors")
    assert grey.grey and grey.codebook.shape == (8, 16)  # --grey reaches the fit: one channel of 4 x 4
    with pytest.raises(SystemExit) as e:
        cli(["fit", "--data", str(image_folder), "--vocab", "1000", "--img_size", "16", "--patch_size", "4",
             "--out", str(tmp_path / "new" / "big.safetensors")])
    assert e.value.code == 2 and "larger than the 768 patches" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the refused fit leaves no file, and no empty folder for it
    with pytest.raises(SystemExit) as e:
        cli(["fit", "--kind", "features", "--out", str(tmp_path / "f.safetensors")])
    assert e.value.code == 2 and "needs a teacher" in capsys.readouterr().err
    assert np.isfinite(tok.fit_info["usage"]["perplexity"])


def test_cli_without_keys_fits_the_tokenizer_beits_run_on_the_same_data_would(tmp_path, image_folder, capsys):
    """The README's ``fit --data ~/my_images`` then ``pretrain/beit.py --data ~/my_images --tokenizer.path``:
    on small images the run trains at the small-data recipe's sizes, and the file must be fitted at them."""
    from sslvit.recipes.beit import BEiTRunConfig
    from sslvit.train.entry import run_config

    out = tmp_path / "tok.safetensors"
    cli(["fit", "--data", str(image_folder), "--out", str(out), "--iters", "2"])
    assert "recipe: small data" in capsys.readouterr().out
    run = run_config(BEiTRunConfig, "beit", argv=["--data", str(image_folder), "--out", str(tmp_path / "run")])
    tok = load_tokenizer(out)
    fitted = (tok.patch_size, tok.fit_info["img_size"], tok.vocab, tok.pixel_size, tok.grey, tok.fit_info["images"])
    assert fitted == (run.model.patch_size, run.model.img_size, run.tokenizer.vocab, run.tokenizer.pixel_size,
                      run.tokenizer.grey, min(48, run.tokenizer.fit_images))
    assert (run.model.patch_size, run.tokenizer.grey) != (16, False)  # the recipe, not the reference defaults
    tok.check_backbone(run.model.patch_size, run.model.img_size, run.model.dynamic_img_size)
    cli(["fit", "--data", str(image_folder), "--out", str(out), "--iters", "2", "--vocab", "4", "--patch_size", "4"])
    assert (load_tokenizer(out).vocab, load_tokenizer(out).patch_size) == (4, 4)  # a key given here still wins
    with pytest.raises(ConfigError, match="--patch_size 8 --img_size 32, or leave them out"):
        load_tokenizer(out).check_backbone(8, 32, False)


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["fit", "--vocab", "3", "-h"]])
def test_cli_help_names_the_command_and_its_keys(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: python -m sslvit.tokenizers fit [--config" in out and "  --vocab 8192" in out


def test_cli_with_an_out_it_cannot_write_says_so_before_fitting(tmp_path, image_folder, capsys):
    (tmp_path / "a_file").write_text("x")
    cases = {tmp_path: "a folder", tmp_path / "a_file" / "t.safetensors": "a file is where its folder would be"}
    for out, why in cases.items():
        with pytest.raises(SystemExit) as e:
            cli(["fit", "--data", str(image_folder), "--out", str(out), "--iters", "2"])
        printed = capsys.readouterr()
        assert e.value.code == 2 and printed.err == (f"error: Cannot write '{out}' ({why}); pass --out a .safetensors "
                                                     "path in a folder you can write to.\n")
        assert "tokenizer:" not in printed.out  # refused before the fit, not after it
