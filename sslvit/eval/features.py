"""Features of a frozen backbone, extracted once."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sslvit.data.dataset import iterate


@torch.no_grad()
def extract_features(backbone, dataset, pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
                     device: str | torch.device = "cpu", desc: str = "features",
                     n_last_blocks: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """-> features (N, F) float32 and labels (N,) of every sample of ``dataset`` (order kept);
    ``pool`` is a recipe of ``SSLViT.features``."""
    backbone.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for imgs, y, _ in tqdm(loader, desc=desc, leave=False):
        feats.append(backbone.features(imgs.to(device), pool=pool, n_last_blocks=n_last_blocks).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def raw_pixel_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline that needs no model: each image's normalized pixels, flattened. -> (N, C*H*W), (N,)"""
    xs, ys = zip(*[(x.flatten(), y) for x, y, _ in iterate(dataset)])
    return torch.stack(xs).float(), torch.as_tensor(ys)
