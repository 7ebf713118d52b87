"""What every visual tokenizer is: a frozen k-means codebook over per-patch vectors.

A tokenizer maps images (B, C, H, W) to token ids (B, N) on the patch grid, the targets of BEiT.
Subclasses say which vectors are quantised (``vectors``); the codebook is fitted with faiss
k-means and saved, with a JSON header describing it, as safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch  # before faiss: faiss imported first makes forked workers that call it hang
import torch.nn as nn
import torch.nn.functional as F
import faiss
from safetensors import SafetensorError, safe_open

from sslvit.config import ConfigError
from sslvit.files import save_safetensors_atomic

HEADER_KEY = "sslvit_tokenizer"


class Tokenizer(nn.Module):
    """Frozen codebook (V, d) plus ``vectors(imgs) -> (B, N, d)``; ``encode`` assigns each patch's
    vector to its nearest code (one matmul per batch). Always in eval mode, never trained by
    gradient: a training loop's ``.train()`` leaves it alone."""

    kind = ""
    spherical = False  # True: vectors and codes are l2-normalised (cosine k-means)
    kinds: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Tokenizer.kinds[cls.kind] = cls

    def __init__(self, vocab: int, dim: int, patch_size: int):
        super().__init__()
        if vocab < 2:
            raise ConfigError(f"tokenizer vocab must be at least 2 (got {vocab}).")
        self.patch_size = patch_size
        self.register_buffer("codebook", torch.zeros(vocab, dim))
        self.fit_info: dict = {}
        super().train(False)

    @property
    def vocab(self) -> int:
        return self.codebook.shape[0]

    def train(self, mode: bool = True):
        return super().train(False)

    def vectors(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, d), the per-patch vectors that the codebook quantises."""
        raise NotImplementedError

    def header(self) -> dict:
        """What the saved file says about itself (kind, vocabulary, patch size, normalisation...)."""
        return {"kind": self.kind, "vocab": self.vocab, "dim": self.codebook.shape[1], "patch_size": self.patch_size,
                "fit": self.fit_info}

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) ids of the nearest code in l2: argmax x.c - |c|^2 / 2 (for unit codes,
        the cosine-nearest one)."""
        c = self.codebook
        return (x @ c.T - 0.5 * (c * c).sum(-1)).argmax(-1)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, H, W) -> ids (B, N); with ``mask`` (B, N) bool, the ids of the True patches only,
        (M,) in the order of ``tensor[mask]``. Runs in fp32 whatever the autocast outside: a
        bf16 distance can pick another code than the fit did."""
        with torch.autocast(imgs.device.type, enabled=False):
            x = self.vectors(imgs.float())
            return self.quantize(x if mask is None else x[mask])

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor], iters: int = 20, seed: int = 0) -> torch.Tensor:
        """Fit the codebook with faiss k-means on every patch vector of ``batches`` (each
        (B, C, H, W)); -> those vectors (n, d), e.g. to report codebook usage on them."""
        x = torch.cat([self.vectors(b.to(self.codebook.device).float()).flatten(0, 1).cpu() for b in batches])
        if len(x) < self.vocab:
            raise ConfigError(f"The tokenizer vocab {self.vocab} is larger than the {len(x)} patches sampled to fit "
                              "it; lower the vocab or fit on more images (fit_images).")
        kmeans = faiss.Kmeans(x.shape[1], self.vocab, niter=iters, seed=seed, spherical=self.spherical)
        kmeans.train(np.ascontiguousarray(x.numpy(), dtype=np.float32))
        self.codebook = torch.from_numpy(kmeans.centroids.copy()).to(self.codebook.device)
        return x

    def draw(self, ids: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """The token-id map of ``imgs`` (B, C, H, W) as a picture (B, 3, H, W) in [0, 1]: a fixed
        random colour per code, each patch filled with its code's colour."""
        palette = torch.rand(self.vocab, 3, generator=torch.Generator().manual_seed(0)).to(imgs.device)
        B, _, H, W = imgs.shape
        p = self.patch_size
        x = palette[ids].transpose(1, 2).reshape(B, 3, H // p, W // p)
        return F.interpolate(x, scale_factor=p, mode="nearest")

    def check_backbone(self, patch_size: int, img_size: int, dynamic_img_size: bool) -> None:
        """ConfigError unless this tokenizer's grid is the one of the backbone it makes targets for."""
        if patch_size != self.patch_size:
            raise ConfigError(f"The tokenizer's patch size {self.patch_size} differs from model.patch_size "
                              f"{patch_size}; fit one with --patch_size {patch_size} --img_size {img_size}, or "
                              "leave them out of `python -m sslvit.tokenizers fit --data DATA`, which then takes "
                              "this run's sizes from its recipe for the same data.")

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "pt", "producer": "sslvit", HEADER_KEY: json.dumps(self.header())}
        save_safetensors_atomic(self.state_dict(), path, metadata=meta)
        return path

    @classmethod
    def from_header(cls, header: dict) -> "Tokenizer":
        """An unfitted tokenizer of the shape ``header`` describes (``load`` fills it)."""
        raise NotImplementedError


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer saved at ``path`` (any kind), with its codebook."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer at '{path}'; fit one with `python -m sslvit.tokenizers fit ... "
                                f"--out {path}`, or leave tokenizer.path unset to fit one on the fly.")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"'{path}' is not a readable safetensors file ({e}); fit the tokenizer again.") from None
    if HEADER_KEY not in meta:
        raise ValueError(f"'{path}' is not an sslvit tokenizer (no '{HEADER_KEY}' header); fit one with "
                         "`python -m sslvit.tokenizers fit`.")
    header = json.loads(meta[HEADER_KEY])
    if header.get("kind") not in Tokenizer.kinds:
        raise ValueError(f"'{path}' holds a tokenizer of unknown kind {header.get('kind')!r}; this sslvit knows "
                         f"{sorted(Tokenizer.kinds)}.")
    tok = Tokenizer.kinds[header["kind"]].from_header(header)
    tok.load_state_dict(state, strict=True)
    tok.fit_info = header.get("fit", {})
    return tok
