"""Features of a frozen backbone, extracted once, by one process or split over many."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from sslvit.data.dataset import iterate
from sslvit.data.shard_reader import ShardDataset


@torch.no_grad()
def extract_features(backbone, dataset, pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
                     device: str | torch.device = "cpu", desc: str = "features",
                     n_last_blocks: int = 4, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> features (N, F) float32 and labels (N,) of every sample of ``dataset``, on the CPU;
    ``pool`` is a recipe of ``SSLViT.features``.

    With an ``accelerator`` of several processes every process extracts its share on its own
    device (``device`` is then ignored) and all of them get the whole result: a map-style dataset
    is dealt sample by sample (process r takes r, r + n, ...) and comes back in its own order; a
    shard stream is split by shards (as the reader deals them) and comes back process by process,
    labels alongside their features."""
    procs = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None:
        device = accelerator.device
    stream = isinstance(dataset, ShardDataset)
    if procs > 1 and not stream:
        dataset = Subset(dataset, range(accelerator.process_index, len(dataset), procs))
    backbone.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    main = accelerator is None or accelerator.is_main_process
    feats, labels = [], []
    for imgs, y, _ in tqdm(loader, desc=desc, leave=False, disable=not main):
        feats.append(backbone.features(imgs.to(device), pool=pool, n_last_blocks=n_last_blocks).float())
        labels.append(torch.as_tensor(y, device=device))
    if not feats:  # this process got no sample (fewer shards than processes): an empty share
        dim = backbone.features(torch.zeros(1, backbone.in_chans, *backbone.patch_embed.img_size, device=device),
                                pool=pool, n_last_blocks=n_last_blocks).shape[1]
        feats, labels = [torch.zeros(0, dim, device=device)], [torch.zeros(0, dtype=torch.long, device=device)]
    feats, labels = torch.cat(feats), torch.cat(labels).long()
    if procs > 1:
        feats, labels = _gather_shares(accelerator, feats, labels, interleaved=not stream)
    return feats.cpu(), labels.cpu()


def _gather_shares(accelerator, feats: torch.Tensor, labels: torch.Tensor, interleaved: bool):
    """Every process's (n_r, F) share -> the whole (N, F) on every process. ``interleaved``: the
    shares were dealt r, r + n, ..., so row j of process r is sample j * n + r."""
    counts = accelerator.gather(torch.tensor([len(labels)], device=feats.device)).tolist()
    longest = max(counts)
    pad = longest - len(labels)
    feats = torch.cat([feats, feats.new_zeros(pad, feats.shape[1])])
    labels = torch.cat([labels, labels.new_zeros(pad)])
    all_feats = accelerator.gather(feats).view(len(counts), longest, -1)
    all_labels = accelerator.gather(labels).view(len(counts), longest)
    if interleaved:
        # padding sits only in the last row of the shorter shares, i.e. at positions >= N
        total = sum(counts)
        return all_feats.transpose(0, 1).reshape(-1, all_feats.shape[-1])[:total], all_labels.t().reshape(-1)[:total]
    return (torch.cat([all_feats[r, :n] for r, n in enumerate(counts)]),
            torch.cat([all_labels[r, :n] for r, n in enumerate(counts)]))


def finish_probe(accelerator, report):
    """End a probe on every process together (the others wait while the main one scores)
    -> ``report`` (None on the other processes)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def raw_pixel_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline that needs no model: each image's normalized pixels, flattened. -> (N, C*H*W), (N,)"""
    xs, ys = zip(*[(x.flatten(), y) for x, y, _ in iterate(dataset)])
    return torch.stack(xs).float(), torch.as_tensor(ys)
