"""Which recipe a run starts from, chosen by its data: an embedded set's own preset, the small-
data recipe for a user's few or small images, or the reference (ImageNet) defaults. The choice
and its reason are the run's first line; every key stays overridable (--config, command line).

The small-data recipe of each objective is its ``cluttered`` preset (chosen by the sweeps in
``benchmarks/quality.py`` on the embedded 32 px set of 4,500 images), fitted to the data:
  - it applies when the images' short side is at most SMALL_SIDE px, or there are fewer than
    FEW_IMAGES of them (a few thousand photos do not train a ViT-B/16 for 800 epochs);
  - the images are used at 32 px (short side below 48 px) or 64 px, on the recipe's 4 x 4 grid of
    patches (patch 8 or 16; local crops scaled alike);
  - fewer images than the 4,500 it was tuned on get proportionally more epochs (at most 4x), so
    the run takes about the same number of steps (and so does the run it starts from, ``start``);
  - the batch is at most half the images (a power of two), and the online k-NN is off
    (``train.knn_every N`` turns it on for a labelled folder);
  - BEiT's pixel codes are pooled as the patch is scaled, and the codebook has at most one code
    per FAISS_MIN_POINTS_PER_CODE patches it is fitted on;
  - DINO's crops are made a batch at a time (``crops.batched``) only when the images' short side
    is at most BATCHED_SHRINK times the crops' size: that path does not low-pass a crop it shrinks.
"""
from __future__ import annotations

import copy
from pathlib import Path

from sslvit.data.cluttered import parse_spec
from sslvit.data.decode import DRAFT_FACTOR
from sslvit.data.folder import DataError
from sslvit.data.shape import SMALL_SIDE, DataShape, data_shape, fitted_batch
from sslvit.data.shard_reader import is_shard_spec
from sslvit.data.transforms import hflip_for
from sslvit.models.backbone_config import VIT_SIZES, BackboneConfig
from sslvit.tokenizers.tokenizer_config import FAISS_MIN_POINTS_PER_CODE
from sslvit.train.start_spec import scaled_start

FEW_IMAGES = 20_000
TUNED_COUNT = 4_500  # training images of the embedded 'cluttered' set
TUNED_SIZE = 32
MAX_EPOCH_SCALE = 4
PIXEL_KEYS = (("model", "img_size"), ("model", "patch_size"), ("crops", "local_size"), ("tokenizer", "pixel_size"))
BATCHED_SHRINK = 1.5


def fitted_small_recipe(preset: dict, shape: DataShape) -> dict:
    """The ``cluttered`` preset fitted to ``shape``: pixel sizes scaled, epochs for the image count."""
    recipe = copy.deepcopy(preset)
    recipe.pop("out", None)  # the run keeps its objective's default folder, not the embedded set's
    scale = (32 if shape.side < 48 else 64) // TUNED_SIZE  # 1 or 2
    for section, key in PIXEL_KEYS:
        if key in recipe.get(section, {}):
            recipe[section][key] = int(recipe[section][key]) * scale  # preset values are text until typed
    train = recipe.setdefault("train", {})
    factor = min(MAX_EPOCH_SCALE, max(1.0, TUNED_COUNT / max(shape.count, 1)))
    if "epochs" in train:
        train["epochs"] = int(round(int(train["epochs"]) * factor))
    if "start" in recipe:
        recipe["start"] = scaled_start(recipe["start"], factor)
    if "batch_size" in train:  # a batch of at most half the images: a few dozen images still train
        train["batch_size"] = fitted_batch(int(train["batch_size"]), shape.count)
    train["knn_every"] = 0  # your data's labels, if any, are for the probes; turn it on with train.knn_every
    crops = recipe.get("crops", {})
    if "batched" in crops and shape.side > BATCHED_SHRINK * TUNED_SIZE * scale:
        crops["batched"] = "false"  # large images shrunk to 32-64 px crops alias without the per-image antialias
    _fit_vocab(recipe, shape.count)
    return recipe


def _fit_vocab(recipe: dict, count: int) -> None:
    """BEiT's pixel codebook at most as large as the patches it is fitted on allow: the largest
    power of two with FAISS_MIN_POINTS_PER_CODE of them a code (a folder of 16 images has 256 patches)."""
    tok, model = recipe.get("tokenizer", {}), recipe.get("model", {})
    if "vocab" not in tok or "img_size" not in model:
        return
    images = min(count, int(tok.get("fit_images", count)))
    patches = images * (int(model["img_size"]) // int(model.get("patch_size", 16))) ** 2
    cap = 1 << max(1, (patches // FAISS_MIN_POINTS_PER_CODE).bit_length() - 1)
    tok["vocab"] = min(int(tok["vocab"]), cap)


def preset_for(presets: dict, data: str) -> tuple[dict | None, str]:
    """(preset to apply or None, the reason) for ``--data``: one line, and a preset's ``note`` (what a
    user of the recipe must know, e.g. what it learns from; not a key) on a second one."""
    recipe, reason = _chosen(presets, data)
    if recipe is None or "note" not in recipe:
        return recipe, reason
    return {k: v for k, v in recipe.items() if k != "note"}, f"{reason}\nnote: {recipe['note']}"


def _chosen(presets: dict, data: str) -> tuple[dict | None, str]:
    if data in presets:
        return presets[data], f"recipe: the '{data}' preset (the embedded set's own)"
    if parse_spec(data) is not None and "cluttered" in presets:
        return presets["cluttered"], f"recipe: the 'cluttered' preset, on the variant '{data}'"
    if "cluttered" not in presets or not (is_shard_spec(data) or Path(data).expanduser().is_dir()):
        return None, "recipe: the reference defaults"
    try:
        shape = data_shape(data)
    except DataError:
        return None, "recipe: the reference defaults"  # the dataset itself says what is wrong, later
    side = f"short side {shape.side} px" if shape.side else "none of those sampled readable"
    seen = f"{shape.count:,} training images, {side}"
    if shape.side > SMALL_SIDE and shape.count >= FEW_IMAGES:
        return None, (f"recipe: the reference defaults ({seen}: more than {SMALL_SIDE} px and at least "
                      f"{FEW_IMAGES:,} images)") + _large_images_note(data, shape.side, BackboneConfig().img_size)
    recipe = fitted_small_recipe(presets["cluttered"], shape)
    why = f"at most {SMALL_SIDE} px" if shape.side <= SMALL_SIDE else f"fewer than {FEW_IMAGES:,} images"
    why = why if shape.side else "no size to go by"
    note = _large_images_note(data, shape.side, int(recipe.get("model", {}).get("img_size", TUNED_SIZE)))
    return recipe, f"recipe: small data ({seen}: {why}), the cluttered preset fitted to it{note}"


def _large_images_note(data: str, side: int, size: int) -> str:
    """A second line for a folder of images at least DRAFT_FACTOR times the run's side: a run reads
    and decodes every file at every step (a JPEG at a reduced DCT scale, ``decode.draft``; any other
    format whole), so storing them smaller once, as shards, is most of what it can still gain (phone
    photos: 10.7x, ``benchmarks/photo_read.py``). 4x keeps RandomResizedCrop's smallest crops at
    the run's size or above (MAE's 0.2 of the area: 0.45 x 4 = 1.8 sides). Shards of such images get
    the same note: they were written without ``--max-side``, and writing them again with it is the gain."""
    if side < DRAFT_FACTOR * size:
        return ""
    stored = DRAFT_FACTOR * size
    if is_shard_spec(data):
        return (f"\nnote: the shards' images have a short side of {side} px and this recipe trains at {size} px, and "
                f"each is decoded at every step; `python -m sslvit.data.shards FOLDER SHARDS --max-side {stored}` "
                f"writes them again from their folder at {stored} px, and --data SHARDS reads those")
    return (f"\nnote: the images' short side is {side} px and this recipe trains at {size} px, and each file is "
            f"read and decoded at every step; `python -m sslvit.data.shards {data} SHARDS --max-side {stored}` "
            f"stores them at {stored} px once, and --data SHARDS reads those")


def _counted(n: int, noun: str) -> str:
    """'1 block', '6 blocks'."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def summary(cfg) -> str:
    """What the resolved config trains, for the recipe line: model, size, epochs, batch."""
    m, t = cfg.model, cfg.train
    flip = "flips left-right" if hflip_for(cfg.data, t.hflip) else "no left-right flips"
    # "ViT-tiny" alone would hide a --model.depth or --model.parallel override; an unknown size is
    # validate()'s to name, after this line is built
    standard_depth = VIT_SIZES[m.size][1] if m.size in VIT_SIZES else None
    blocks = "" if m.depth in (None, standard_depth) else f", {_counted(m.depth, 'block')}"
    blocks += f" of {m.parallel} parallel branches" if m.parallel > 1 else ""
    return (f"this run: ViT-{m.size}/{m.patch_size}{blocks} at {m.img_size} px, {_counted(t.epochs, 'epoch')} "
            f"of batch {t.batch_size}, {flip} (every key stays yours to set)")
