"""Image transforms (torchvision.transforms.v2). torchvision is imported by the functions that
build them, so the constants and ``denormalize`` come without it (and a command's ``--help``
without its import time)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
# sum_c LUMA_c (x_c std_c + mean_c) = LUMA_STD * luma(x) + LUMA_MEAN: the luma of normalised
# images stays in normalised units, so per-patch epsilons mean the same for grey as for colour
LUMA_MEAN = sum(w * m for w, m in zip(LUMA, IMAGENET_MEAN))
LUMA_STD = sum(w * s for w, s in zip(LUMA, IMAGENET_STD))


class ToNormalizedTensor:
    """A PIL image (H, W) or a uint8 tensor (C, H, W) -> float32 (C, H, W) in [0, 1], normalized
    by the ImageNet mean and std. The arithmetic of ``v2.ToImage``, ``v2.ToDtype(float32,
    scale=True)`` and ``v2.Normalize`` op for op, so bit for bit the same (tested), without v2's
    per-call dispatch: that cost 0.22 ms of a 32 px crop's 0.33 ms, a tenth of a small MAE epoch.
    Any other input (16-bit images, float tensors, arrays) goes through those v2 transforms."""

    def __init__(self):
        self.mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
        self._v2 = None

    def __call__(self, img) -> torch.Tensor:
        x = self._uint8(img)
        if x is None:
            return self._general(img)
        # v2: to_dtype_image's int -> float branch, then normalize_image (sub, then div_); not sub_:
        # a 1-channel image broadcasts to 3 channels there, as it does in v2
        return x.to(torch.float32).mul_(1.0 / 255).sub(self.mean).div_(self.std)

    @staticmethod
    def _uint8(img) -> Optional[torch.Tensor]:
        """(C, H, W) uint8 as ``v2.ToImage`` makes it (a PIL image's HWC memory, permuted), or None."""
        if isinstance(img, torch.Tensor):
            return img if img.dtype == torch.uint8 and img.ndim == 3 else None
        import numpy as np
        from PIL import Image

        if not isinstance(img, Image.Image):
            return None
        a = np.array(img, copy=True)
        if a.dtype != np.uint8:
            return None
        return torch.from_numpy(a).view(img.size[1], img.size[0], -1).permute(2, 0, 1)

    def _general(self, img) -> torch.Tensor:
        if self._v2 is None:
            from torchvision.transforms import v2

            self._v2 = v2.Compose(v2_normalized_tensor())
        return self._v2(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={IMAGENET_MEAN}, std={IMAGENET_STD})"


def v2_normalized_tensor() -> list:
    """torchvision's ToImage + ToDtype(float32, scale=True) + Normalize: what ToNormalizedTensor computes."""
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def _to_normalized_tensor():
    return [ToNormalizedTensor()]


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


def luma(imgs: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) ImageNet-normalised -> (B, 1, H, W): the pixels' luma, (luma - LUMA_MEAN) / LUMA_STD."""
    w = torch.tensor(IMAGENET_STD, device=imgs.device) * torch.tensor(LUMA, device=imgs.device) / LUMA_STD
    return (imgs * w.view(1, 3, 1, 1).to(imgs.dtype)).sum(1, keepdim=True)


def grey_to_normalised_rgb(y: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) ``luma`` output -> (B, 3, H, W) ImageNet-normalised grey, for pictures."""
    mean = torch.tensor(IMAGENET_MEAN, device=y.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=y.device).view(1, 3, 1, 1)
    return (y * LUMA_STD + LUMA_MEAN - mean) / std


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
