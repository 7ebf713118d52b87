"""``python -m sslvit.tokenizers fit --kind pixel|features --data DIR|digits [--teacher RUN_DIR]
--vocab V --out FILE.safetensors``: fit a tokenizer and report its codebook usage on the data,
so a collapsed codebook shows before pretraining. ``fit --help`` lists every key."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from sslvit.config import ConfigError, build_config
from sslvit.tokenizers.fit import TokenizerFitConfig, fit_tokenizer
from sslvit.runtime.errors import USER_ERRORS


@dataclass
class FitCommand(TokenizerFitConfig):
    data: str = "digits"  # 'digits' (embedded) or a folder of images
    out: str = "tokenizer.safetensors"
    img_size: Optional[int] = None  # pixel: None = 16 for digits (their preset), else 224; features: the teacher's
    patch_size: Optional[int] = None  # pixel: None = 4 for digits, else 16; features: the teacher's

    def validate(self) -> None:
        super().validate()
        if self.grey and self.kind != "pixel":  # asked for here; a run's recipe may set it for its pixel default
            raise ConfigError("--grey is for the pixel kind; leave it off with --kind features.")


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "fit":
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    try:
        cfg = build_config(FitCommand, argv[1:])
        digits = cfg.data == "digits"
        tok, _ = fit_tokenizer(cfg, cfg.data, cfg.img_size or (16 if digits else 224),
                               cfg.patch_size or (4 if digits else 16))
        path = tok.save(cfg.out)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"-> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
