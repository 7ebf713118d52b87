"""Image transforms (torchvision.transforms.v2). torchvision is imported by the functions that
build them, so the constants and ``denormalize`` come without it (and a command's ``--help``
without its import time)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor():
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def hflip_for(data: str, hflip: Optional[bool] = None) -> bool:
    """Whether augmentation flips images left-right: ``hflip`` when set, else yes, but not for the
    embedded digit sets, where a mirrored digit is another digit or none (a 2 reads as a 5)."""
    from sslvit.data.dataset import is_embedded  # here: the data sets' imports are not for --help

    return (not is_embedded(data)) if hflip is None else bool(hflip)


def mae_train_transform(img_size: int, scale=(0.2, 1.0), hflip: bool = True) -> v2.Compose:
    """MAE pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip
    (``hflip``)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(img_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        *([v2.RandomHorizontalFlip()] if hflip else []),
        *_to_normalized_tensor(),
    ])


def eval_transform(img_size: int) -> v2.Compose:
    """Resize the short side to img_size / 0.875, centre-crop img_size (the usual 224/256 protocol)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(int(round(img_size / 0.875)), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
        *_to_normalized_tensor(),
    ])


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalized -> [0, 1] for pictures."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


class CompositeTransform:
    """One image -> {name: each part's transform of it}."""

    def __init__(self, transforms: dict[str, Callable]):
        self.transforms = transforms

    def __call__(self, img):
        return {name: t(img) for name, t in self.transforms.items()}
