"""Features of a frozen backbone, extracted once, by one process or split over many."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from sslvit.data.dataset import iterate
from sslvit.data.shard_reader import ShardDataset
from sslvit.files import WRITE_ERRORS, OutputError, disk_full, reason
from sslvit.runtime.main_first import raised_together


@torch.no_grad()
def extract_features(backbone, dataset, pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
                     device: str | torch.device = "cpu", desc: str = "features",
                     n_last_blocks: int = 4, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> features (N, F) float32 and labels (N,) of every sample of ``dataset``, on the CPU;
    ``pool`` is a recipe of ``SSLViT.features``.

    With an ``accelerator`` of several processes every process extracts its share on its own
    device (``device`` is then ignored) and all of them get the whole result: a map-style dataset
    is dealt sample by sample (process r takes r, r + n, ...) and comes back in its own order; a
    shard stream is split by shards (as the reader deals them to processes and workers) and, keyed
    (``build_dataset``'s), comes back in its written order, whatever the processes and workers."""
    procs = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None:
        device = accelerator.device
    stream = isinstance(dataset, ShardDataset)
    if stream and accelerator is None:  # one reader (the online k-NN): every shard, whatever the process group
        dataset = dataset.whole()
    if procs > 1 and not stream:
        dataset = Subset(dataset, range(accelerator.process_index, len(dataset), procs))
    backbone.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    main = accelerator is None or accelerator.is_main_process
    feats, labels, places = [], [], []
    for imgs, y, place in tqdm(loader, desc=desc, leave=False, disable=not main):
        feats.append(backbone.features(imgs.to(device), pool=pool, n_last_blocks=n_last_blocks).float())
        labels.append(torch.as_tensor(y, device=device))
        places.append(torch.as_tensor(place, device=device))
    if not feats:  # this process got no sample (fewer shards than processes): an empty share
        dim = backbone.features(torch.zeros(1, backbone.in_chans, *backbone.patch_embed.img_size, device=device),
                                pool=pool, n_last_blocks=n_last_blocks).shape[1]
        feats, labels = [torch.zeros(0, dim, device=device)], [torch.zeros(0, dtype=torch.long, device=device)]
        places = labels
    feats, labels, places = torch.cat(feats), torch.cat(labels).long(), torch.cat(places).long()
    if procs > 1:
        feats, labels, places = _gather_shares(accelerator, [feats, labels, places], interleaved=not stream)
    if stream and dataset.keyed:  # one order for any processes and workers: the one items_at reads
        order = places.argsort()
        feats, labels = feats[order], labels[order]
    return feats.cpu(), labels.cpu()


def _gather_shares(accelerator, shares: list[torch.Tensor], interleaved: bool) -> list[torch.Tensor]:
    """Every process's (n_r, ...) shares -> the whole (N, ...) of each on every process. ``interleaved``:
    the samples were dealt r, r + n, ..., so row j of process r is sample j * n + r."""
    counts = accelerator.gather(torch.tensor([len(shares[0])], device=shares[0].device)).tolist()
    longest, total = max(counts), sum(counts)
    whole = []
    for share in shares:
        rest = share.shape[1:]
        padded = torch.cat([share, share.new_zeros(longest - len(share), *rest)])
        every = accelerator.gather(padded).view(len(counts), longest, *rest)
        if interleaved:  # padding sits only in the last row of the shorter shares, i.e. at positions >= N
            whole.append(every.transpose(0, 1).reshape(-1, *rest)[:total])
        else:
            whole.append(torch.cat([every[r, :n] for r, n in enumerate(counts)]))
    return whole


def finish_probe(accelerator, report, write: Optional[Callable[[], None]], folder: Path):
    """End a probe on every process together (the others wait while the main one scores and runs
    ``write``, which writes its files into ``folder``) -> ``report`` (None on the other processes).
    A write the disk refuses (full, read-only) ends every process with OutputError: one sentence
    naming ``folder``, where it was a traceback on the main process and a wait on the others."""
    def said(failed: BaseException) -> str:
        return (f"Cannot write the probe's results into '{folder}' ({reason(failed)}); "
                f"{'free some space there, or ' * disk_full(failed)}copy the run to a disk you can write to and pass "
                "--ckpt with the copy.")

    raised_together(write, WRITE_ERRORS, said, OutputError)
    accelerator.end_training()
    return report


def raw_pixel_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline that needs no model: each image's normalized pixels, flattened. -> (N, C*H*W), (N,)"""
    xs, ys = zip(*[(x.flatten(), y) for x, y, _ in iterate(dataset)])
    return torch.stack(xs).float(), torch.as_tensor(ys)
