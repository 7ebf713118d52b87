"""Attention maps of an exported backbone: ``python probes/attention.py --ckpt RUN_DIR
[--image PATH] [--img_size N]`` writes a picture of the last block's cls-token attention per
head over each image (DINO's ``visualize_attention.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from torchvision.transforms import v2

from sslvit.data.dataset import build_dataset
from sslvit.data.decode import to_rgb
from sslvit.data.folder import DataError
from sslvit.data.sample import spread_sample
from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from sslvit.models.attention_maps import attention_columns
from sslvit.models.export import load_backbone, resolve_backbone_path, run_data_of
from sslvit.models.vit import check_img_size
from sslvit.files import existing, written
from sslvit.pictures import save_columns


@dataclass
class AttentionConfig:
    ckpt: str = "runs/dino-digits"  # run directory or its backbone.safetensors
    image: Optional[str] = None  # an image file; None: a seeded sample of the run's val data spread over classes
    data: Optional[str] = None  # with no --image: 'digits' or a folder; None: the run's own data
    num_images: int = 8
    img_size: Optional[int] = None  # short side in pixels; None: the backbone's training size
    out: Optional[str] = None  # picture path; None: attention.png next to the checkpoint


def _load_image(path: str, short_side: int, patch: int) -> torch.Tensor:
    """The image at ``path`` as a (1, 3, H, W) batch: short side ``short_side``, centre-cropped to whole patches."""
    try:
        with Image.open(Path(path).expanduser()) as opened:
            img = to_rgb(opened)
    except Exception as e:  # missing, a folder, or bytes PIL cannot decode (it raises many types)
        raise DataError(f"'{path}' is not a readable image file ({e.__class__.__name__}); pass --image with a "
                        "path to a PNG or JPEG.") from None
    x = v2.Compose([v2.ToImage(), v2.Resize(short_side, interpolation=v2.InterpolationMode.BICUBIC,
                                            antialias=True),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    h, w = (x.shape[1] // patch) * patch, (x.shape[2] // patch) * patch  # whole patches only, as DINO crops
    return v2.functional.center_crop(x, [h, w])[None]


def run_attention(cfg: AttentionConfig) -> dict:
    if cfg.num_images < 1:
        raise ValueError(f"--num_images {cfg.num_images} asks for no picture; use 1 or more (8 by default).")
    weights = resolve_backbone_path(cfg.ckpt)
    # dynamic_img_size: the position table is interpolated to the picture's grid
    backbone, bcfg = load_backbone(weights, dynamic_img_size=True)
    backbone.eval()
    size = check_img_size(bcfg.img_size if cfg.img_size is None else cfg.img_size, bcfg.patch_size)
    if cfg.image is not None:
        imgs = _load_image(cfg.image, size, bcfg.patch_size)
    else:
        data = cfg.data or run_data_of(weights)
        dataset = build_dataset(data, "val", size, transform=eval_transform(size))
        imgs = torch.stack(spread_sample(dataset, cfg.num_images))  # seeded, spread over the classes
    columns, normalized = attention_columns(backbone, imgs)
    out = Path(cfg.out).expanduser() if cfg.out else weights.parent / "attention.png"
    replaced = existing([out])
    where = Path(cfg.image).name if cfg.image else f"{imgs.shape[0]} val images of {Path(data).name or data}"
    caption = (f"{weights.parent.resolve().name} · cls-token attention of the last block per head, over {where} "
               f"at {imgs.shape[2]}x{imgs.shape[3]} px ({imgs.shape[2] // bcfg.patch_size}x"
               f"{imgs.shape[3] // bcfg.patch_size} patches)")
    written(out, lambda: save_columns(columns, out, normalized, caption=caption),
            "pass --out a .png path in a folder you can write to")
    return {"picture": str(out), "ckpt": str(weights), "images": imgs.shape[0], "heads": len(columns) - 2,
            "replaced": replaced,
            "grid": [imgs.shape[2] // bcfg.patch_size, imgs.shape[3] // bcfg.patch_size]}


def format_report(report: dict) -> str:
    g = report["grid"]
    return (f"Attention of the cls token, last block: {report['heads']} heads over a {g[0]}x{g[1]} patch grid "
            f"for {report['images']} image(s) -> {report['picture']}")
