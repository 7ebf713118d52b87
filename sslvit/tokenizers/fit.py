"""Fitting a tokenizer on a sample of the training data, and the tokenizer of a BEiT run."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Subset

from sslvit.config import ConfigError
from sslvit.data.dataset import build_dataset
from sslvit.data.transforms import mae_train_transform
from sslvit.tokenizers.base import FAISS_MIN_POINTS_PER_CODE, Tokenizer, load_tokenizer
from sslvit.tokenizers.features import FeatureTokenizer
from sslvit.tokenizers.pixel import PixelTokenizer
from sslvit.tokenizers.usage import codebook_usage, collapse_warnings, format_usage
from sslvit.train.checkpoint import latest_checkpoint

RUN_TOKENIZER = "tokenizer.safetensors"


@dataclass
class TokenizerFitConfig:
    kind: str = "pixel"  # pixel (k-means over normalised patch pixels) | features (over a teacher's patch features)
    teacher: Optional[str] = None  # features: run directory (or backbone.safetensors) of a pretrained sslvit backbone
    vocab: int = 8192  # codebook size (BEiT: 8192)
    fit_images: int = 2000  # training images sampled for k-means (all their patches are used)
    pixel_size: int = 8  # pixel: each patch is average-pooled to this side first (BEiT's dVAE sees 112 px)
    iters: int = 20  # k-means iterations
    seed: int = 0

    def validate(self) -> None:
        if self.kind not in ("pixel", "features"):
            raise ConfigError(f"tokenizer kind '{self.kind}' is unknown; use pixel or features.")
        if self.kind == "features" and not self.teacher:
            raise ConfigError("The features tokenizer needs a teacher; pass teacher with the run directory of a "
                              "pretrained sslvit backbone (e.g. a DINO run).")
        if self.fit_images < 1 or self.iters < 1:
            raise ConfigError(f"fit_images and iters must be >= 1 (got {self.fit_images}, {self.iters}).")


@dataclass
class TokenizerConfig(TokenizerFitConfig):
    """A BEiT run's tokenizer: a fitted file, or the settings to fit one on its training data."""

    path: Optional[str] = None  # a fitted tokenizer (.safetensors); None: fit one with the keys above


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_fit_batches(data: str, img_size: int, n: int, seed: int, batch_size: int = 256):
    """Batches (B, C, H, W) of ``n`` training images drawn without replacement, with the pretraining
    augmentation (the tokenizer encodes augmented crops during training, so it is fitted on them)."""
    dataset = build_dataset(data, "all" if data != "digits" else "train", img_size,
                            transform=mae_train_transform(img_size))
    pick = np.sort(np.random.default_rng(seed).choice(len(dataset), min(n, len(dataset)), replace=False))
    loader = DataLoader(Subset(dataset, pick.tolist()), batch_size=batch_size, shuffle=False)
    with torch.random.fork_rng(devices=[]):  # fitting leaves the caller's RNG stream as it was
        torch.manual_seed(seed)
        return [imgs for imgs, _, _ in loader]


def fit_tokenizer(cfg: TokenizerFitConfig, data: str, img_size: int, patch_size: int,
                  log=print) -> tuple[Tokenizer, dict]:
    """Fit a ``cfg.kind`` tokenizer on ``cfg.fit_images`` images of ``data`` -> (tokenizer, its
    codebook usage on those images' patches). ``log`` gets progress and collapse warnings."""
    cfg.validate()
    if cfg.kind == "features":
        tok = FeatureTokenizer.from_run(cfg.teacher, cfg.vocab)
        img_size = tok.teacher_cfg.img_size
    else:
        tok = PixelTokenizer(cfg.vocab, patch_size, cfg.pixel_size)
    tok.to(_device())
    t0 = time.perf_counter()
    batches = sample_fit_batches(data, img_size, cfg.fit_images, cfg.seed)
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
    return tok.cpu(), usage


def run_tokenizer(cfg: TokenizerConfig, data: str, img_size: int, patch_size: int, run_dir: Path,
                  resume: bool) -> Tokenizer:
    """The tokenizer of a BEiT run, always kept as ``run_dir/tokenizer.safetensors``: on resume the
    one saved there; else ``cfg.path`` if given, or one fitted now on the training data (on the main
    process; the others wait and load it), then saved into the run."""
    saved = run_dir / RUN_TOKENIZER
    state = PartialState()
    if resume and saved.is_file():
        state.print(f"Reusing the run's tokenizer {saved}.")
        return load_tokenizer(saved)
    has_ckpt = latest_checkpoint(run_dir) is not None
    if has_ckpt and resume:
        raise FileNotFoundError(f"The run '{run_dir}' has checkpoints but no {RUN_TOKENIZER}, so its targets cannot "
                                "be rebuilt; put the tokenizer it was trained with there.")
    if has_ckpt:  # checked here too: the loop refuses the run, but only after this would overwrite the tokenizer
        raise FileExistsError(f"Run directory '{run_dir}' already holds checkpoints; pass --resume to continue "
                              "that run, or --out a new directory.")
    with state.main_process_first():
        if not state.is_main_process:
            return load_tokenizer(saved)
        if cfg.path:
            tok = load_tokenizer(cfg.path)
        else:
            print(f"No tokenizer.path given: fitting a {cfg.kind} tokenizer (vocab {cfg.vocab}) on "
                  f"{cfg.fit_images} images of the training data; it is saved as {saved}.")
            tok, _ = fit_tokenizer(cfg, data, img_size, patch_size)
        tok.save(saved)
    return tok
