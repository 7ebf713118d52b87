"""Features of a frozen backbone, cached on disk as safetensors next to the weights.

The key covers everything the features depend on: the weights' bytes, the feature recipe,
the data source and split, the image size and the augmentation pass. A second probe (linear
or k-NN) with the same key reads the file and never runs the backbone."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sslvit.data.shard_reader import is_shard_spec
from sslvit.files import WRITE_ERRORS, reason, save_safetensors_atomic

CACHE_DIR = "features"


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(weights: Path, **fields) -> tuple[str, dict]:
    """-> (short hex key, the fields it was made from)."""
    desc = {"weights": file_digest(weights), **{k: fields[k] for k in sorted(fields)}}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20], desc


# torchvision's RandomResizedCrop area range, which MAE's and DINO's linear probes train on
DEFAULT_AUG_CROP_SCALE = (0.08, 1.0)


def feature_key(recipe: str, n_last_blocks: int, data: str, split: str, img_size: int,
                aug_pass: int | None = None, aug_seed: int | None = None, aug_hflip: bool = True,
                aug_crop_scale: tuple[float, float] = DEFAULT_AUG_CROP_SCALE) -> dict:
    """The fields the features depend on besides the weights; every probe builds its key here,
    so the k-NN and linear probes read each other's cache."""
    key = dict(recipe=recipe, n_last_blocks=n_last_blocks, data=str(data), split=split, img_size=img_size,
               aug_pass=aug_pass, aug_seed=aug_seed)
    if aug_pass is not None and not aug_hflip:  # only then: the keys of every cache written before stay valid
        key["aug_hflip"] = False
    if aug_pass is not None and tuple(aug_crop_scale) != DEFAULT_AUG_CROP_SCALE:  # likewise
        key["aug_crop_scale"] = tuple(float(v) for v in aug_crop_scale)
    if is_shard_spec(str(data)):  # in the stream's written order since 2026-12-07 (process order before)
        key["order"] = "written"
    return key


def cached_features(weights: Path, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]], write: bool = True,
                    **fields) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """-> (features (N, F), labels (N,), hit). ``compute()`` runs only on a miss; its result is
    written to ``<weights dir>/features/<key>.safetensors`` atomically (if ``write``: with several
    processes, the main one writes and every one computes its share)."""
    key, desc = cache_key(weights, **fields)
    path = weights.parent / CACHE_DIR / f"{key}.safetensors"
    if path.is_file():
        try:
            state = load_file(str(path))
            return state["features"], state["labels"], True
        except (SafetensorError, OSError, KeyError):
            pass  # an unreadable cache file is recomputed and replaced
    feats, labels = compute()
    if not write:
        return feats, labels, False
    meta = {k: str(v) for k, v in desc.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic({"features": feats.contiguous(), "labels": labels.contiguous()}, path, metadata=meta)
    except WRITE_ERRORS as e:  # a cache only saves time: the probe goes on with the features it holds
        print(f"warning: the features could not be cached in '{path.parent}' "
              f"({reason(e)}); the probe goes on without the cache.", file=sys.stderr)
    return feats, labels, False
