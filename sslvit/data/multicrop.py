"""DINO's multi-crop augmentation (torchvision transforms v2) and a collate that batches the
crops by resolution, so the backbone runs once per resolution (Caron et al. 2021, sec. 3.1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class MultiCropConfig:
    """Crop sizes are pixels; scales are the fraction of the image area a crop covers.
    The global crops' size is the backbone's ``img_size``."""

    global_scale: tuple[float, float] = (0.4, 1.0)
    local_number: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels, at every crop size (as PIL's radius in the reference)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    # draw each image's crop parameters in the data set, make the crops a batch at a time (batched_multicrop.py):
    # the same distribution, a fraction of the time on small images; no antialias when a crop shrinks
    batched: bool = False

    def validate(self, global_size: int, patch_size: int) -> None:
        if self.local_number < 0:
            raise ValueError(f"crops.local_number must be >= 0 (got {self.local_number}).")
        if self.local_number and self.local_size % patch_size:
            raise ValueError(f"crops.local_size {self.local_size} is not a multiple of model.patch_size "
                             f"{patch_size}; pick a local crop size that the patch size divides.")
        if self.local_number and self.local_size >= global_size:
            raise ValueError(f"crops.local_size {self.local_size} must be smaller than model.img_size {global_size}.")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crops.{name} {getattr(self, name)} must satisfy 0 < low <= high <= 1.")


def blur_kernel_size(size: int, max_sigma: float) -> int:
    # an odd kernel that covers +-3 sigma, but never more than the crop
    k = min(2 * int(3 * max_sigma) + 1, size - 1 if size % 2 == 0 else size)
    return max(3, k)


def _view(size: int, scale, blur_p: float, solarize_p: float, cfg: MultiCropConfig, hflip: bool) -> v2.Compose:
    from torchvision.transforms import v2  # here, not at the top: --help needs no torchvision

    b, c, s, h = cfg.color_jitter
    grey = cfg.grayscale_p >= 1  # every crop grey: one channel from the start, 1.76x less work (crop_cost.py)
    if grey:
        s = h = 0.0  # a grey image has no saturation or hue to jitter
    ops = [
        *([v2.Grayscale(num_output_channels=1)] if grey else []),
        v2.ToImage(),  # uint8 tensor: every op below runs on tensors, none through PIL
        v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        *([v2.RandomHorizontalFlip()] if hflip else []),
    ]
    if any((b, c, s, h)) and cfg.color_jitter_p > 0:  # hue alone costs ~1 ms per crop
        ops.append(v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)],
                                  p=cfg.color_jitter_p))
    if 0 < cfg.grayscale_p < 1:
        ops.append(v2.RandomGrayscale(p=cfg.grayscale_p))
    if blur_p > 0:
        sigma = cfg.blur_sigma
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size, sigma[1]), sigma=tuple(sigma))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    if grey:
        ops.append(v2.Grayscale(num_output_channels=3))  # the backbone's 3 input channels, all equal
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(ops)


class MultiCropTransform:
    """PIL image -> list of 2 global crops (3, G, G) then ``local_number`` local crops (3, L, L).

    Blur p 1.0 / 0.1 / 0.5 (global 1, global 2, locals) and solarisation p 0.2 on global 2 only,
    as DINO's ``DataAugmentationDINO``; every view flips left-right with p 0.5 when ``hflip``."""

    def __init__(self, global_size: int, cfg: MultiCropConfig, hflip: bool = True):
        self.global1 = _view(global_size, cfg.global_scale, 1.0, 0.0, cfg, hflip)
        self.global2 = _view(global_size, cfg.global_scale, 0.1, 0.2, cfg, hflip)
        self.local = _view(cfg.local_size, cfg.local_scale, 0.5, 0.0, cfg, hflip)
        self.local_number = cfg.local_number

    def __call__(self, img) -> list[torch.Tensor]:
        return [self.global1(img), self.global2(img)] + [self.local(img) for _ in range(self.local_number)]


def multicrop_data(global_size: int, cfg: MultiCropConfig, hflip: bool = True):
    """-> (the per-sample transform, the collate) of DINO's multi-crop: per image (``MultiCropTransform``,
    ``multicrop_collate``) or, with ``cfg.batched``, drawn per image and made per batch."""
    if not cfg.batched:
        return MultiCropTransform(global_size, cfg, hflip), multicrop_collate
    from sslvit.data.batched_multicrop import BatchedMultiCropCollate, MultiCropDraw  # it builds on this module

    return MultiCropDraw(cfg, hflip), BatchedMultiCropCollate(global_size, cfg)


def multicrop_collate(batch):
    """[(crops, label, skipped)] * B -> (groups, labels (B,), skipped (B,)).

    ``groups`` holds one tensor per crop resolution, in crop order: (2B, 3, G, G) for the global
    crops, then (nB, 3, L, L) for the local ones. Within a group the layout is view-major
    (view 0 of every image, then view 1, ...), so ``group.chunk(n_views)`` gives the views."""
    views = list(zip(*[sample[0] for sample in batch]))  # views[v] = the v-th crop of every image
    groups, start = [], 0
    while start < len(views):
        end = start
        while end < len(views) and views[end][0].shape == views[start][0].shape:
            end += 1
        groups.append(torch.stack([crop for v in views[start:end] for crop in v]))
        start = end
    labels = torch.tensor([sample[1] for sample in batch])
    skipped = torch.tensor([sample[2] for sample in batch])
    return groups, labels, skipped
