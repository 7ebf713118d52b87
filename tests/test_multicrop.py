"""DINO's multi-crop augmentation and the collate that groups crops by resolution."""
import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.data.multicrop import MultiCropConfig, MultiCropTransform, multicrop_collate


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8))


def test_two_global_then_n_local_crops_of_the_right_sizes(photo):
    crops = MultiCropTransform(32, MultiCropConfig(local_number=6, local_size=16, blur_sigma=(0.1, 1.0)))(photo)
    assert len(crops) == 8
    assert [c.shape for c in crops[:2]] == [(3, 32, 32)] * 2
    assert [c.shape for c in crops[2:]] == [(3, 16, 16)] * 6
    assert all(c.dtype == torch.float32 for c in crops)
    assert not torch.equal(crops[0], crops[1])  # independent views


def test_crops_are_deterministic_under_a_seed(photo):
    tf = MultiCropTransform(32, MultiCropConfig(local_number=3, local_size=16))
    torch.manual_seed(1)
    a = tf(photo)
    torch.manual_seed(1)
    b = tf(photo)
    torch.manual_seed(2)
    c = tf(photo)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_no_local_crops_gives_the_two_globals_only(photo):
    assert len(MultiCropTransform(32, MultiCropConfig(local_number=0))(photo)) == 2


def test_collate_groups_by_resolution_view_major():
    B, n_local = 3, 4
    batch = []
    for i in range(B):  # crop value encodes (image, view)
        crops = [torch.full((3, 8, 8), 10.0 * i + v) for v in range(2)]
        crops += [torch.full((3, 4, 4), 10.0 * i + 2 + v) for v in range(n_local)]
        batch.append((crops, i % 2, 0))
    groups, labels, skipped = multicrop_collate(batch)
    assert [g.shape for g in groups] == [(2 * B, 3, 8, 8), (n_local * B, 3, 4, 4)]
    # view-major: all images' view 0, then all images' view 1, ...
    assert groups[0][:, 0, 0, 0].tolist() == [0, 10, 20, 1, 11, 21]
    assert groups[1][:, 0, 0, 0].tolist() == [10.0 * i + 2 + v for v in range(n_local) for i in range(B)]
    assert labels.tolist() == [0, 1, 0] and skipped.tolist() == [0, 0, 0]


def test_bad_crop_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="multiple of model.patch_size"):
        MultiCropConfig(local_size=10).validate(global_size=32, patch_size=4)
    with pytest.raises(ValueError, match="smaller than model.img_size"):
        MultiCropConfig(local_size=32).validate(global_size=32, patch_size=4)
    with pytest.raises(ValueError, match="global_scale"):
        MultiCropConfig(local_size=16, global_scale=(0.8, 0.2)).validate(global_size=32, patch_size=4)


def test_every_crop_grey_is_the_luma_of_the_image_in_three_equal_channels():
    from sslvit.data.transforms import denormalize

    rng = np.random.default_rng(1)
    rgb = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    cfg = MultiCropConfig(local_number=2, local_size=16, global_scale=(1.0, 1.0), blur_sigma=(1e-3, 1e-3),
                          color_jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=1.0)
    crops = MultiCropTransform(32, cfg, hflip=False)(Image.fromarray(rgb))
    assert [c.shape for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    for c in crops:
        pixels = denormalize(c[None])[0]
        assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)
    luma = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0  # ITU-R 601, as PIL's 'L'
    first = denormalize(crops[0][None])[0, 0].double().numpy()  # the whole image, unblurred, unjittered
    assert np.abs(first - luma).max() <= 1.0 / 255 + 1e-6
