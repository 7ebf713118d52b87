"""Fitting a tokenizer on a sample of the training data (a BEiT run's own: ``sslvit.recipes.run_tokenizer``)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sslvit.data.dataset import build_dataset, first_items
from sslvit.data.shard_reader import build_shard_dataset, is_shard_spec
from sslvit.data.transforms import hflip_for, mae_train_transform
from sslvit.tokenizers.base import Tokenizer
from sslvit.tokenizers.features import FeatureTokenizer
from sslvit.tokenizers.pixel import PixelTokenizer
# the keys live in tokenizer_config (no faiss for --help); RUN_TOKENIZER and TokenizerConfig are imported from here too
from sslvit.tokenizers.tokenizer_config import (FAISS_MIN_POINTS_PER_CODE, RUN_TOKENIZER, TokenizerConfig,  # noqa: F401
                                              TokenizerFitConfig)
from sslvit.tokenizers.usage import codebook_usage, collapse_warnings, format_usage


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_fit_batches(data: str, img_size: int, n: int, seed: int, batch_size: int = 256, transform=None):
    """Batches (B, C, H, W) of ``n`` training images drawn without replacement, with the pretraining
    augmentation (the tokenizer encodes augmented crops during training, so it is fitted on them).
    The run's training split, as pretraining reads it, so a folder's held-out probe images stay unseen.
    A shard set has no random access: its first ``n`` samples in the seeded shuffled order.
    ``transform``: the run's own (its crop scale and flips); else MAE's at ``img_size``."""
    transform = transform or mae_train_transform(img_size, hflip=hflip_for(data))
    if is_shard_spec(data):
        stream = build_shard_dataset(data, "train", transform, shuffle=True, seed=seed, read_for=img_size)
        images = lambda: torch.stack(first_items(stream, n)).split(batch_size)  # noqa: E731
    else:
        dataset = build_dataset(data, "train", img_size, transform=transform)
        pick = np.sort(np.random.default_rng(seed).choice(len(dataset), min(n, len(dataset)), replace=False))
        loader = DataLoader(Subset(dataset, pick.tolist()), batch_size=batch_size, shuffle=False)
        images = lambda: (imgs for imgs, _, _ in loader)  # noqa: E731
    with torch.random.fork_rng(devices=[]):  # fitting leaves the caller's RNG stream as it was
        torch.manual_seed(seed)
        return list(images())


def fit_tokenizer(cfg: TokenizerFitConfig, data: str, img_size: int, patch_size: int,
                  log=print, picture: Path | None = None, transform=None) -> tuple[Tokenizer, dict]:
    """Fit a ``cfg.kind`` tokenizer on ``cfg.fit_images`` images of ``data`` -> (tokenizer, its
    codebook usage on those images' patches). ``log`` gets progress and collapse warnings;
    ``picture``: where a pixel tokenizer's most used codes are drawn (``codebook_picture``);
    ``transform``: the training run's augmentation, whose crops the tokenizer will encode."""
    cfg.validate()
    if cfg.kind == "features":
        tok = FeatureTokenizer.from_run(cfg.teacher, cfg.vocab)
        img_size = tok.teacher_cfg.img_size
    else:
        tok = PixelTokenizer(cfg.vocab, patch_size, cfg.pixel_size, grey=cfg.grey)
    tok.to(_device())
    t0 = time.perf_counter()
    batches = sample_fit_batches(data, img_size, cfg.fit_images, cfg.seed, transform=transform)
    n_images = sum(len(b) for b in batches)
    vectors = tok.fit(batches, cfg.iters, cfg.seed)
    ids = torch.cat([tok.quantize(chunk.to(tok.codebook.device)).cpu() for chunk in vectors.split(8192)])
    usage = codebook_usage(ids, tok.vocab)
    tok.fit_info = {"data": str(data), "images": n_images, "patches": len(vectors), "img_size": img_size,
                    "iters": cfg.iters, "seed": cfg.seed, "usage": usage}
    log(f"{cfg.kind} tokenizer: {tok.vocab} codes of {tok.codebook.shape[1]}-d vectors, fitted on {len(vectors)} "
        f"patches of {n_images} images of '{data}' in {time.perf_counter() - t0:.1f} s")
    if len(vectors) < FAISS_MIN_POINTS_PER_CODE * tok.vocab:
        log(f"note: {len(vectors) / tok.vocab:.0f} patches per code; k-means wants {FAISS_MIN_POINTS_PER_CODE}+ "
            "(raise fit_images or lower the vocab)")
    log(format_usage(usage))
    for w in collapse_warnings(usage):
        log(f"warning: {w}")
    if picture is not None and isinstance(tok, PixelTokenizer):
        from sslvit.tokenizers.codebook_picture import save_codebook_picture  # matplotlib: only when drawn

        caption = (f"{Path(picture).parent.name} · pixel tokenizer: {tok.vocab} codes of {tok.pixel_size}x"
                   f"{tok.pixel_size} px patches, fitted on {len(vectors):,} patches · the {min(32, tok.vocab)} most "
                   "used codes, each stretched to its own range; its share of the patches under it")
        log(f"codebook picture: {save_codebook_picture(tok.cpu(), ids, Path(picture), caption)}")
    return tok.cpu(), usage
