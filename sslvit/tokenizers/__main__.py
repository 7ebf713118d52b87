"""``python -m sslvit.tokenizers fit --kind pixel|features --data DIR|digits [--teacher RUN_DIR]
--vocab V --out FILE.safetensors``: fit a tokenizer and report its codebook usage on the data,
so a collapsed codebook shows before pretraining. ``fit --help`` lists every key.

Keys left unset are those ``pretrain/beit.py --data DATA`` fits its own tokenizer with (its recipe for
the data: a preset, the small-data recipe of a folder, or the reference defaults), so the file fits
that run. An entry point: it reads the recipes, which the tokenizers package below them does not."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sslvit.config import ConfigError, build_config, help_text
from sslvit.files import written
from sslvit.tokenizers.fit import TokenizerFitConfig, fit_tokenizer
from sslvit.runtime.errors import USER_ERRORS
from sslvit.train.data_recipe import preset_for
from sslvit.train.entry import load_presets


@dataclass
class FitCommand(TokenizerFitConfig):
    data: str = "digits"  # 'digits' (embedded) or a folder of images
    out: str = "tokenizer.safetensors"
    # pixel: None = the BEiT recipe's for the data (the reference 224 and 16 by default); features: the teacher's
    img_size: Optional[int] = None
    patch_size: Optional[int] = None

    def validate(self) -> None:
        super().validate()
        if self.grey and self.kind != "pixel":  # asked for here; a run's recipe may set it for its pixel default
            raise ConfigError("--grey is for the pixel kind; leave it off with --kind features.")


def beit_recipe_keys(data: str, kind: str) -> tuple[dict, str]:
    """The fit keys of BEiT's recipe for ``data`` (its tokenizer section, and for the pixel kind the
    image and patch size the run quantises) and the recipe's one-line reason."""
    recipe, reason = preset_for(load_presets("beit"), data)
    recipe = recipe or {}
    keys = dict(recipe.get("tokenizer", {}))
    if kind == "pixel":
        keys.update({k: v for k, v in recipe.get("model", {}).items() if k in ("img_size", "patch_size")})
    else:  # the pixel codes' keys, which a run's features tokenizer ignores too
        keys = {k: v for k, v in keys.items() if k not in ("grey", "pixel_size")}
    return keys, reason.partition("\n")[0]


def main(argv: list[str]) -> None:
    if {"-h", "--help"} & set(argv):
        print(f"{__doc__.strip()}\n\n{help_text(FitCommand, 'python -m sslvit.tokenizers fit')}")
        raise SystemExit(0)
    if not argv or argv[0] != "fit":
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    try:
        asked = build_config(FitCommand, argv[1:])
        keys, reason = beit_recipe_keys(asked.data, asked.kind)
        cfg = build_config(FitCommand, argv[1:], presets=lambda data: keys)
        print(f"{reason}: the tokenizer pretrain/beit.py --data {cfg.data} would fit, unless a key is given here")
        path, fix = Path(cfg.out).expanduser(), "pass --out a .safetensors path in a folder you can write to"
        written(path, None, fix)  # before the fit: a path it cannot write is said at once
        tok, _ = fit_tokenizer(cfg, cfg.data, cfg.img_size or 224, cfg.patch_size or 16)
        written(path, lambda: tok.save(path), fix)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("Stopped by Ctrl-C (SIGINT); nothing was written to --out.", file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as a stopped training run
    print(f"-> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
