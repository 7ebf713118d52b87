"""DINO's multi-crop drawn per image and made per batch (crops.batched): each batched op against
torchvision's functional op applied image by image, the crop draw against RandomResizedCrop's,
and the whole chain against torchvision's ops in MultiCropTransform's order."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from sslvit.data import batch_ops
from sslvit.data.batched_multicrop import (BLUR_ON, BRIGHT, COLUMNS, CONTRAST, FLIP, GREY_ON, HUE, JITTER, ORDER, SAT,
                                           SIGMA, SOLAR_ON, BatchedMultiCropCollate, MultiCropDraw, crop_boxes)
from sslvit.data.dataset import ImageDataset
from sslvit.data.multicrop import MultiCropConfig, blur_kernel_size, multicrop_data
from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def images(n=4, c=3, h=20, w=24, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_resized_crop_samples_where_torchvision_does():
    x = images()
    n = len(x)
    whole = torch.tensor([[0.0, 0.0, 20.0, 24.0]] * n)
    got = batch_ops.resized_crop(x, whole, torch.zeros(n, dtype=torch.bool), 16)
    want = TF.resize(x, [16, 16], interpolation=TF.InterpolationMode.BICUBIC, antialias=False).clamp(0, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # an inner crop: the same inside; at its rim a tap past the crop reads the image, not a repeated edge
    box = torch.tensor([[3.0, 5.0, 10.0, 12.0]] * n)
    got = batch_ops.resized_crop(x, box, torch.zeros(n, dtype=torch.bool), 16)
    want = TF.resized_crop(x, 3, 5, 10, 12, [16, 16], interpolation=TF.InterpolationMode.BICUBIC,
                           antialias=False).clamp(0, 1)
    torch.testing.assert_close(got[..., 2:-2, 2:-2], want[..., 2:-2, 2:-2], atol=1e-5, rtol=0)
    flip = torch.tensor([True, False, True, False])
    flipped = batch_ops.resized_crop(x, box, flip, 16)
    torch.testing.assert_close(flipped[flip], got[flip].flip(-1))
    torch.testing.assert_close(flipped[~flip], got[~flip])


@pytest.mark.parametrize("name,factors", [
    ("brightness", [0.6, 1.0, 1.4, 0.9]), ("contrast", [0.6, 1.0, 1.4, 0.0]),
    ("saturation", [0.6, 1.0, 1.4, 0.0]), ("hue", [-0.2, 0.0, 0.2, 0.5])])
def test_colour_ops_match_torchvision_per_image(name, factors):
    x = images()
    f = torch.tensor(factors)
    got = getattr(batch_ops, f"adjust_{name}")(x, f)
    want = torch.stack([getattr(TF, f"adjust_{name}")(img, float(v)) for img, v in zip(x, f)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_grey_images_skip_saturation_and_hue_and_keep_brightness_contrast():
    x = images(c=1)
    f = torch.tensor([0.6, 1.0, 1.4, 0.3])
    assert torch.equal(batch_ops.adjust_saturation(x, f), x) and torch.equal(batch_ops.adjust_hue(x, f), x)
    want = torch.stack([TF.adjust_contrast(img, float(v)) for img, v in zip(x, f)])
    torch.testing.assert_close(batch_ops.adjust_contrast(x, f), want, atol=1e-6, rtol=0)


def test_blur_and_solarize_match_torchvision_per_image():
    x = images()
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    got = batch_ops.gaussian_blur(x, sigma, 5)
    want = torch.stack([TF.gaussian_blur(img, [5, 5], [float(s), float(s)]) for img, s in zip(x, sigma)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch_ops.solarize(x, 0.5), TF.solarize(x, 0.5))


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.4, 1.0)), (32, 32, (0.2, 0.5)), (10, 40, (0.9, 1.0))])
def test_crop_boxes_are_drawn_as_random_resized_crop(height, width, scale):
    """The distribution of (top, left, h, w) against torchvision's own draw; (10, 40) at 0.9-1 rarely
    fits a ratio of 3/4 to 4/3, so it tests the fallback (a centred box of the widest ratio)."""
    n = 4000
    torch.manual_seed(0)
    got = torch.from_numpy(crop_boxes(height, width, np.array([scale] * n),
                                      torch.rand(n, 22, dtype=torch.float64).numpy())).float()
    img = torch.zeros(1, height, width)
    want = torch.tensor([RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]).float()
    assert (got[:, 0] + got[:, 2] <= height).all() and (got[:, 1] + got[:, 3] <= width).all() and (got >= 0).all()
    assert torch.equal(got, got.round())
    torch.testing.assert_close(got.mean(0), want.mean(0), atol=0.4, rtol=0)
    torch.testing.assert_close(got.std(0), want.std(0), atol=0.4, rtol=0)


def chain_by_torchvision(img, p, size, cfg):
    """One view of ``img`` (C, H, W) in [0, 1] as MultiCropTransform's ops make it, with the parameters ``p``."""
    top, left, h, w = (int(v) for v in p[:4])
    x = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BICUBIC,
                        antialias=False).clamp(0, 1)
    if p[FLIP]:
        x = TF.horizontal_flip(x)
    if p[JITTER]:
        for op in p[ORDER].long().tolist():
            name, column = [("brightness", BRIGHT), ("contrast", CONTRAST), ("saturation", SAT), ("hue", HUE)][op]
            if name in ("saturation", "hue") and x.shape[0] == 1:
                continue
            x = getattr(TF, f"adjust_{name}")(x, float(p[column]))
    if p[GREY_ON]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p[BLUR_ON]:
        k = blur_kernel_size(size, cfg.blur_sigma[1])  # the kernel MultiCropTransform gives GaussianBlur
        x = TF.gaussian_blur(x, [k, k], [float(p[SIGMA])] * 2)
    if p[SOLAR_ON]:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x.expand(3, -1, -1), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("channels", [3, 1])
def test_every_view_is_torchvisions_chain_with_the_same_parameters(channels):
    """Whole-image boxes (so the rim is the image's, as in F.resized_crop) and parameters drawn by
    MultiCropDraw, every op forced on in some rows and off in others."""
    cfg = MultiCropConfig(local_number=3, local_size=16, blur_sigma=(0.1, 1.0),
                          grayscale_p=0.5 if channels == 3 else 1.0,
                          batched=True)
    torch.manual_seed(3)
    draw, collate = MultiCropDraw(cfg, hflip=True), BatchedMultiCropCollate(32, cfg)
    imgs = [(torch.rand(channels, 32, 32) * 255).round().to(torch.uint8) for _ in range(4)]
    samples = []
    for i, img in enumerate(imgs):
        p = draw.draw(32, 32)
        p[:, :4] = torch.tensor([0.0, 0.0, 32.0, 32.0])
        for v, column in enumerate((FLIP, JITTER, GREY_ON, BLUR_ON, SOLAR_ON)):
            p[:, column] = float((i + v) % 2) if column != GREY_ON or channels == 3 else 0.0
        samples.append(((img, p), i, 0))
    groups, labels, _ = collate(samples)
    assert [tuple(g.shape) for g in groups] == [(8, 3, 32, 32), (12, 3, 16, 16)]
    for g, (first, views, size) in zip(groups, [(0, 2, 32), (2, 3, 16)]):
        for v in range(views):
            for i, (img, p) in enumerate(s[0] for s in samples):
                want = chain_by_torchvision(img.float() / 255, p[first + v], size, cfg)
                torch.testing.assert_close(g[v * len(imgs) + i], want, atol=2e-5, rtol=0)
    assert labels.tolist() == [0, 1, 2, 3]


def test_images_of_several_sizes_are_cropped_size_by_size():
    cfg = MultiCropConfig(local_number=2, local_size=16, batched=True)
    draw, collate = multicrop_data(32, cfg, hflip=False)
    rng = np.random.default_rng(0)
    pics = [Image.fromarray((rng.random(shape) * 255).astype(np.uint8)) for shape in
            [(32, 32, 3), (40, 36, 3), (32, 32, 3)]]
    torch.manual_seed(0)
    samples = [(draw(p), 0, 0) for p in pics]
    together, _, _ = collate(samples)
    for i, sample in enumerate(samples):
        alone, _, _ = collate([sample])
        for g_all, g_one in zip(together, alone):
            torch.testing.assert_close(g_all[i::3], g_one)


def test_draw_rates_and_ranges_follow_the_config():
    cfg = MultiCropConfig(local_number=2, local_size=16, color_jitter=(0.4, 0.3, 0.2, 0.1), grayscale_p=0.2)
    torch.manual_seed(0)
    p = torch.stack([MultiCropDraw(cfg, hflip=False).draw(32, 32) for _ in range(3000)])  # (3000, V, COLUMNS)
    assert p.shape[1:] == (4, COLUMNS) and (p[..., FLIP] == 0).all()
    rate = p.mean(0)
    # DINO's blur p 1.0 / 0.1 / 0.5 and solarisation 0 / 0.2 / 0 by view; jitter 0.8, grey 0.2 on every view
    torch.testing.assert_close(rate[:, BLUR_ON], torch.tensor([1.0, 0.1, 0.5, 0.5]), atol=0.03, rtol=0)
    torch.testing.assert_close(rate[:, SOLAR_ON], torch.tensor([0.0, 0.2, 0.0, 0.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(rate[:, JITTER], torch.full((4,), 0.8), atol=0.03, rtol=0)
    torch.testing.assert_close(rate[:, GREY_ON], torch.full((4,), 0.2), atol=0.03, rtol=0)
    for column, (lo, hi) in [(BRIGHT, (0.6, 1.4)), (CONTRAST, (0.7, 1.3)), (SAT, (0.8, 1.2)), (HUE, (-0.1, 0.1))]:
        assert lo <= p[..., column].min() and p[..., column].max() <= hi
        assert p[..., column].max() - p[..., column].min() > 0.9 * (hi - lo)
    assert (p[..., ORDER].sort(-1).values == torch.arange(4.0)).all()  # a permutation per view
    assert 0.1 <= p[..., SIGMA].min() and p[..., SIGMA].max() <= 2.0


def test_grey_first_gives_one_channel_and_a_seeded_data_set_draws_by_sample():
    cfg = MultiCropConfig(local_number=2, local_size=16, grayscale_p=1.0, batched=True)
    draw, _ = multicrop_data(32, cfg, hflip=True)
    rng = np.random.default_rng(0)
    pics = [Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    data = ImageDataset(pics, [0, 1, 2], draw, seed=5)
    (img, p), _, _ = data[1]
    assert img.shape == (1, 32, 32) and img.dtype == torch.uint8
    again = data[1][0][1]
    assert torch.equal(p, again) and not torch.equal(p, data[2][0][1])
    data.set_epoch(1)
    assert not torch.equal(p, data[1][0][1])


def test_dino_recipe_picks_the_batched_pair():
    from sslvit.recipes.dino import DINORunConfig

    cfg = DINORunConfig(crops=dataclasses.replace(MultiCropConfig(), batched=True))
    assert isinstance(cfg.train_transform(), MultiCropDraw)
    assert isinstance(cfg.collate_fn(), BatchedMultiCropCollate)


def test_the_draw_takes_a_uint8_tensor_as_a_pil_image():
    cfg = MultiCropConfig(local_number=1, local_size=16, grayscale_p=1.0, batched=True)
    rgb = (torch.rand(3, 32, 32) * 255).to(torch.uint8)
    torch.manual_seed(0)
    x, p = MultiCropDraw(cfg)(rgb)
    torch.manual_seed(0)
    y, q = MultiCropDraw(cfg)(TF.to_pil_image(rgb))
    assert x.shape == y.shape == (1, 32, 32) and torch.equal(p, q)
    assert (x.int() - y.int()).abs().max() <= 1  # torchvision's grey weights against PIL's
