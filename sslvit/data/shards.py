"""webdataset tar shards: the index format and the shard writer.

``python -m sslvit.data.shards SRC OUT`` turns an image folder into ``OUT/<split>-%06d.tar``
shards plus ``OUT/<split>.json``, the index the readers take the epoch length, the progress bar
and the class names from. A folder with ``train/`` and ``val/`` sub-folders gives both splits;
any other folder is split as reading it directly splits it (``folder.held_out_split``: a seeded
``--val_fraction``, default 20%, becomes ``val``, the rest ``train``), so pretraining and the
probes see the same images either way; ``--val_fraction 0`` writes it whole as ``--split``.

Each sample is ``<key>.<ext>`` (the image file's own bytes, not re-encoded; with ``--max-side N``
an image whose short side is above N is stored at short side N: see ``stored_image``) and, when the
folder is labelled, ``<key>.cls`` (the class index as text). Samples are assigned to shards in a
seeded random order, so each shard mixes classes and two writes with the same seed give the
same bytes. A shard is written under a temporary name and renamed when complete: an interrupted
write never leaves a file a reader would trust, and running the same command again resumes,
keeping the shards that are already complete.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm.auto import tqdm

from sslvit.data.decode import draft, to_rgb
from sslvit.data.folder import VAL_FRACTION, DataError, held_out_split, scan_folder
from sslvit.files import OutputError, mend_write

INDEX_FORMAT = "sslvit-shards/1"
TAR_OVERHEAD = 1024  # bytes per member beside its data: a 512-byte header plus padding, at most


@dataclass
class ShardPlan:
    name: str  # e.g. train-000003.tar
    files: list[str]  # image paths, in write order
    labels: list[int]  # -1 when the folder is unlabelled
    first_key: int  # the running sample number of the first sample: keys are unique across shards


def plan_shards(paths: list[Path], labels: list[int], split: str, seed: int, max_count: int,
                max_bytes: int) -> list[ShardPlan]:
    """Shuffle the samples with ``seed`` and cut them into shards of at most ``max_count`` samples
    and about ``max_bytes`` bytes (a shard holds at least one sample)."""
    order = np.random.default_rng(seed).permutation(len(paths))
    plans: list[ShardPlan] = []
    files: list[str] = []
    labs: list[int] = []
    size, first = 0, 0
    for n, i in enumerate(order.tolist()):
        item_bytes = paths[i].stat().st_size + 2 * TAR_OVERHEAD
        if files and (len(files) >= max_count or size + item_bytes > max_bytes):
            plans.append(ShardPlan(f"{split}-{len(plans):06d}.tar", files, labs, first))
            files, labs, size, first = [], [], 0, n
        files.append(str(paths[i]))
        labs.append(labels[i])
        size += item_bytes
    if files:
        plans.append(ShardPlan(f"{split}-{len(plans):06d}.tar", files, labs, first))
    return plans


def _image_ext(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def stored_image(path: str, max_side: Optional[int]) -> tuple[str, bytes]:
    """(extension, bytes) of the image at ``path`` as a shard stores it: the file's own bytes, or,
    when ``max_side`` is set and the image's short side is above it, the image upright (EXIF
    orientation applied), as RGB, resized (antialiased) to short side ``max_side`` and encoded again:
    PNG stays PNG, anything else becomes JPEG at quality 95. A run reads and decodes every file at
    every step (a JPEG at a reduced DCT scale): phone photos stored at 256 px read 10.7x faster than
    the folder for 64 px crops (``benchmarks/photo_read.py``).
    A file PIL cannot open is stored as it is, for the reader to count as corrupt."""
    raw = Path(path).read_bytes()
    if max_side is None:
        return _image_ext(path), raw
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if min(img.size) <= max_side:
                return _image_ext(path), raw
            draft(img, max_side)  # a JPEG decodes at the smallest DCT scale still at least max_side
            img = to_rgb(img)
    except Exception:  # PIL raises many types for corrupt files
        return _image_ext(path), raw
    w, h = img.size
    scale = max_side / min(w, h)
    img = img.resize((max(max_side, round(w * scale)), max(max_side, round(h * scale))), Image.BICUBIC,
                     reducing_gap=3.0)
    png = _image_ext(path) == "png"
    buf = io.BytesIO()
    img.save(buf, format="PNG" if png else "JPEG", **({} if png else {"quality": 95}))
    return ("png" if png else "jpg"), buf.getvalue()


def write_shard(plan: ShardPlan, out: str, max_side: Optional[int] = None) -> dict:
    """Write one shard (temporary name, then rename; a write that fails leaves neither); -> its
    index entry. A source file that cannot be read is a DataError, a shard that cannot be written
    (a full disk) an OutputError: one sentence each, where they were a traceback."""
    final = Path(out) / plan.name
    tmp = final.with_name(f".{plan.name}.{os.getpid()}.tmp")
    try:
        with wds.TarWriter(str(tmp), encoder=False, mtime=0.0) as sink:  # mtime fixed: a plan gives the same bytes
            for j, (path, label) in enumerate(zip(plan.files, plan.labels)):
                try:
                    ext, data = stored_image(path, max_side)
                except OSError as e:
                    raise DataError(f"Cannot read '{path}' ({e.strerror or e}); make it readable or move it out "
                                    "of the folder.") from None
                sample = {"__key__": f"{plan.first_key + j:09d}", ext: data}
                if label >= 0:
                    sample["cls"] = str(label).encode()
                sink.write(sample)
        os.replace(tmp, final)
    except OSError as e:
        raise OutputError(f"Cannot write shard '{final}' ({e.strerror or e}); {mend_write(e, final.parent)}, then "
                          "run the same command again: it keeps the shards already written.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return _entry(final, len(plan.files))


def _entry(path: Path, count: int) -> dict:
    return {"name": path.name, "count": count, "bytes": path.stat().st_size}


def _plan_digest(plans: list[ShardPlan], max_side: Optional[int]) -> str:
    h = hashlib.sha256(json.dumps(max_side).encode())  # other sizes are another write
    for p in plans:
        h.update(json.dumps([p.name, p.files, p.labels, p.first_key]).encode())
    return h.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_split(found: tuple[list[Path], list[int], list[str]], out: Path, split: str, seed: int = 0,
                max_count: int = 10000, max_bytes: int = 1 << 30, workers: int = 1, progress: bool = True,
                max_side: Optional[int] = None) -> dict:
    """Write one split's shards and its index ``out/<split>.json``; ``found``: (paths, labels,
    classes) as ``scan_folder`` gives them; ``max_side``: see ``stored_image``. -> the index."""
    paths, labels, classes = found
    plans = plan_shards(paths, labels, split, seed, max_count, max_bytes)
    out.mkdir(parents=True, exist_ok=True)
    digest = _plan_digest(plans, max_side)
    plan_file = out / f".{split}.plan"
    index_file = out / f"{split}.json"
    if index_file.exists() or plan_file.exists():
        recorded = plan_file.read_text() if plan_file.exists() else json.loads(index_file.read_text()).get("plan")
        if recorded != digest:
            raise DataError(f"'{out}' already holds '{split}' shards of a different write (other images, seed or "
                            "shard size); write to a new --out, or delete them first.")
    plan_file.write_text(digest)
    done = {p.name for p in plans if (out / p.name).exists()}  # complete: shards only appear by rename
    todo = [p for p in plans if p.name not in done]
    entries = {name: _entry(out / name, next(len(p.files) for p in plans if p.name == name)) for name in done}
    t0 = time.perf_counter()
    bar = tqdm(total=len(plans), initial=len(done), desc=f"{split} shards", disable=not progress)
    with bar:  # closed before an error's line, not after it
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for entry in pool.map(write_shard, todo, [str(out)] * len(todo), [max_side] * len(todo)):
                    entries[entry["name"]] = entry
                    bar.update()
        else:
            for p in todo:
                entry = write_shard(p, str(out), max_side)
                entries[entry["name"]] = entry
                bar.update()
    seconds = time.perf_counter() - t0
    index = {
        "format": INDEX_FORMAT,
        "split": split,
        "num_samples": len(paths),
        "classes": classes,
        "seed": seed,
        "max_side": max_side,
        "plan": digest,
        "shards": [entries[p.name] for p in plans],
    }
    _write_json(index_file, index)
    plan_file.unlink()
    written = sum(len(p.files) for p in todo)
    index_stats = {"written_samples": written, "seconds": seconds}
    return {**index, **index_stats}


def write_shards(src: str | Path, out: str | Path, split: str = "train", val_fraction: float = VAL_FRACTION,
                 **kw) -> list[dict]:
    """A folder with train/ and val/ gives both splits; any other folder gives train and val held
    out as the folder reader holds them out (``val_fraction``), or, with ``val_fraction`` 0, ``split``."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise DataError(f"Image folder '{src}' does not exist; pass the folder that holds your images.")
    if out.exists() and not out.is_dir():
        raise DataError(f"The output '{out}' is a file; pass a folder (new or holding this write's shards).")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val_fraction {val_fraction} must be in [0, 1): the share of the images held out as val.")
    if (src / "train").is_dir() and (src / "val").is_dir():
        return [write_split(scan_folder(src / s), out, s, **kw) for s in ("train", "val")]
    found = scan_folder(src)
    if val_fraction == 0:
        return [write_split(found, out, split, **kw)]
    if split != "train":
        raise DataError(f"--split {split} names the one split of a write with --val_fraction 0; this write makes "
                        "train and val: drop --split, or add --val_fraction 0.")
    paths, labels, classes = found
    parts = dict(zip(("train", "val"), held_out_split(len(paths), val_fraction)))
    if not parts["train"]:
        raise DataError(f"'{src}' holds {len(paths)} image(s), too few to hold out {val_fraction:.0%} as val; "
                        "add images, or pass --val_fraction 0.")
    return [write_split(([paths[i] for i in keep], [labels[i] for i in keep], classes), out, name, **kw)
            for name, keep in parts.items()]


def read_index(location: str) -> dict:
    """The index at a local path or any URL webdataset's gopen opens (``pipe:...``)."""
    try:
        with wds.gopen(location, "rb") as f:
            index = json.loads(f.read())
    except Exception as e:  # gopen raises OSError, pipe errors, ...; all mean the same to a user
        raise DataError(f"The shard index '{location}' cannot be read ({e.__class__.__name__}); write the shards "
                        "with `python -m sslvit.data.shards` or point --data at its <split>.json.") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise DataError(f"'{location}' is not an sslvit shard index (format {INDEX_FORMAT}); write the shards with "
                        "`python -m sslvit.data.shards`.")
    return index


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sslvit.data.shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="image folder (labels from first-level sub-folders, optional)")
    ap.add_argument("out", help="output folder for <split>-%%06d.tar and <split>.json")
    ap.add_argument("--val_fraction", type=float, default=VAL_FRACTION,
                    help="share of a folder without train/ and val/ written as val, the same images reading the "
                         f"folder directly holds out (default {VAL_FRACTION}; 0 writes it whole as --split)")
    ap.add_argument("--split", default="train", help="split name with --val_fraction 0 (default train)")
    ap.add_argument("--max-count", type=int, default=10000, help="samples per shard at most (default 10000)")
    ap.add_argument("--max-size", type=float, default=1.0, help="GB per shard, about (default 1.0)")
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="writer processes")
    ap.add_argument("--seed", type=int, default=0, help="sample order seed (default 0)")
    ap.add_argument("--max-side", "--max_side", dest="max_side", type=int, default=None,
                    help="store an image whose short side is above N at short side N (upright, RGB; PNG stays PNG, "
                         "the rest JPEG at quality 95): a run reads every file at every step. Default: the "
                         "files' own bytes")
    args = ap.parse_args(argv)
    if args.max_count < 1 or args.max_size <= 0 or (args.max_side is not None and args.max_side < 1):
        print("error: --max-count, --max-size and --max-side must be positive.", file=sys.stderr)
        raise SystemExit(2)
    try:
        results = write_shards(args.src, args.out, args.split, args.val_fraction, seed=args.seed,
                               max_count=args.max_count, max_bytes=int(args.max_size * 1e9), workers=args.workers,
                               max_side=args.max_side)
    except (DataError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("Stopped by Ctrl-C (SIGINT); the complete shards are kept, and the same command writes the rest.",
              file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as a stopped training run
    for r in results:
        rate = r["written_samples"] / max(r["seconds"], 1e-9)
        shards, classes = len(r["shards"]), len(r["classes"])
        print(f"{r['split']}: {r['num_samples']} samples in {shards} shard{'s' * (shards != 1)}, {classes} "
              f"class{'es' * (classes != 1)} -> {Path(args.out) / (r['split'] + '.json')}  "
              f"({r['written_samples']} written, {rate:.0f} images/s)")


if __name__ == "__main__":
    main()
