"""The tokenizer of a BEiT run: reused on resume, given, or fitted now, and kept in the run."""
from __future__ import annotations

from pathlib import Path

from sslvit.runtime.devices import process_state
from sslvit.runtime.main_first import main_process_does
from sslvit.tokenizers.base import Tokenizer, load_tokenizer
from sslvit.tokenizers.fit import RUN_TOKENIZER, TokenizerConfig, fit_tokenizer
from sslvit.train.checkpoint import latest_checkpoint


def run_tokenizer(cfg: TokenizerConfig, data: str, img_size: int, patch_size: int, run_dir: Path,
                  resume: bool, transform=None) -> Tokenizer:
    """The tokenizer of a BEiT run, always kept as ``run_dir/tokenizer.safetensors``: on resume the
    one saved there; else ``cfg.path`` if given, or one fitted now on the training data (on the main
    process; the others wait and load it) on crops of the run's ``transform``, then saved into the run."""
    saved = run_dir / RUN_TOKENIZER
    state = process_state()
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
    tok = main_process_does(lambda: _made_tokenizer(cfg, data, img_size, patch_size, run_dir, transform),
                            f"the run's tokenizer {saved}")
    return tok if tok is not None else load_tokenizer(saved)  # the others load what the main process saved


def _made_tokenizer(cfg: TokenizerConfig, data: str, img_size: int, patch_size: int, run_dir: Path,
                    transform) -> Tokenizer:
    """``cfg.path`` loaded, or a tokenizer fitted now on the training data; saved into the run."""
    tok = load_tokenizer(cfg.path) if cfg.path else _fitted(cfg, data, img_size, patch_size, run_dir, transform)
    tok.save(run_dir / RUN_TOKENIZER)
    return tok


def _fitted(cfg: TokenizerConfig, data: str, img_size: int, patch_size: int, run_dir: Path, transform) -> Tokenizer:
    unused = "; tokenizer.grey is for the pixel kind, unused here" if cfg.grey and cfg.kind != "pixel" else ""
    print(f"No tokenizer.path given: fitting a {cfg.kind} tokenizer (vocab {cfg.vocab}) on "
          f"{cfg.fit_images} images of the training data; it is saved as {run_dir / RUN_TOKENIZER}{unused}.")
    return fit_tokenizer(cfg, data, img_size, patch_size, picture=run_dir / "tokenizer_codebook.png",
                         transform=transform)[0]
