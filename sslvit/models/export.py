"""The exported backbone: ``backbone.safetensors`` (timm parameter names) + ``backbone.json``;
and, as a command, a run in the layout timm or the official code reads:

    python -m sslvit.models.export RUN --to timm OUT.safetensors   # the run's backbone, timm names
    python -m sslvit.models.export RUN --to mae OUT.pth            # {'model': encoder + decoder}, main_pretrain.py's
    python -m sslvit.models.export RUN --to dino OUT.pth           # {'student', 'teacher', 'dino_loss'}, main_dino.py's
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import os
import sys
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from sslvit.models.checkpoint_layouts import (Imported, WeightsError, from_sslvit_checkpoint, import_file,
                                              newest_checkpoint_weights, to_dino, to_mae, to_timm)
from sslvit.models.init_from import backbone_config_of, backbone_shape, load_imported
from sslvit.models.vit import BackboneConfig, SSLViT, build_backbone, timm_spec
from sslvit.files import atomic_path, free_on_its_disk, save_safetensors_atomic, write_json_atomic, written

WEIGHTS = "backbone.safetensors"
SPEC = "backbone.json"


def export_backbone(backbone: SSLViT, cfg: BackboneConfig, out_dir: Path, state: dict | None = None) -> Path:
    """Write ``backbone.json`` and ``backbone.safetensors`` into ``out_dir`` (made if missing; the
    classifier head left out); ``state`` replaces ``backbone.state_dict()`` (FSDP gathers it from the
    shards)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = timm_spec(cfg)
    stem = spec["embed_layer"]
    if isinstance(stem, functools.partial):  # an older stem: its class and the argument that builds it
        spec["embed_layer_kwargs"], stem = stem.keywords, stem.func
    spec["embed_layer"] = f"{stem.__module__}.{stem.__name__}"
    spec["block_fn"] = getattr(spec["block_fn"], "__name__", str(spec["block_fn"]))
    write_json_atomic({"backbone": dataclasses.asdict(cfg), "timm": spec}, out_dir / SPEC)
    state = backbone.state_dict() if state is None else state
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    path = out_dir / WEIGHTS
    save_safetensors_atomic(state, path, metadata={"format": "pt", "producer": "sslvit"})
    return path


def _check_readable(path: Path) -> None:
    """A file this process may not read is one sentence saying so: ``Path.is_file()`` is False for a
    file in a folder it may not enter, which would read as 'missing'."""
    try:
        path.stat()
    except PermissionError:
        raise PermissionError(f"'{path}' cannot be reached (permission denied on a folder above it); give this "
                              "user read and execute rights on the run folder, or copy the run somewhere "
                              "readable.") from None
    except OSError:
        return  # missing: the caller says what is missing and where it comes from
    if path.is_file() and not os.access(path, os.R_OK):
        raise PermissionError(f"'{path}' cannot be read (permission denied); give this user read rights on it "
                              "(chmod a+r), or copy the run somewhere readable.")


def resolve_backbone_path(path: str | Path) -> Path:
    """A run directory or a ``backbone.safetensors`` path -> the weights file (checked)."""
    p = Path(path).expanduser()
    _check_readable(p)
    if p.is_file() and p.suffix != ".safetensors":
        raise FileNotFoundError(f"'{p}' is not a backbone; pass --ckpt a run directory or its {WEIGHTS}.")
    weights = p / WEIGHTS if p.is_dir() else p
    _check_readable(weights)
    _check_readable(weights.parent / SPEC)
    if not weights.is_file():
        raise FileNotFoundError(f"No backbone weights at '{weights}'; pass --ckpt with a run directory "
                                f"or its {WEIGHTS} (a run writes it when it ends).")
    if not (weights.parent / SPEC).is_file():
        raise FileNotFoundError(f"'{weights.parent / SPEC}' is missing; it describes the backbone's shape and is "
                                f"written next to {WEIGHTS}. Copy it along with the weights.")
    return weights


def read_backbone_config(path: str | Path) -> BackboneConfig:
    """The exported backbone's config (``backbone.json``), without reading the weights."""
    weights = resolve_backbone_path(path)
    spec = weights.parent / SPEC
    try:
        entries = json.loads(spec.read_text())["backbone"]
        entries.setdefault("stem_norm", "layer")  # written before the key existed, with the stem of then
        cfg = BackboneConfig(**entries)
        cfg.validate()
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        why = {KeyError: f"no {e} entry", TypeError: "an entry BackboneConfig does not take"}.get(type(e), str(e))
        raise ValueError(f"'{spec}' is not a backbone description sslvit wrote ({why}); copy the backbone.json "
                         f"that was written with the weights.") from None
    return cfg


def load_backbone(path: str | Path, state_hook=None, **overrides) -> tuple[SSLViT, BackboneConfig]:
    """Rebuild the exported backbone from a run directory or its ``backbone.safetensors``;
    ``overrides`` change its config, ``state_hook(state) -> state`` adapts the weights to them
    (e.g. a position table resampled to another image size)."""
    weights = resolve_backbone_path(path)
    cfg = dataclasses.replace(read_backbone_config(weights), **overrides)
    model = build_backbone(cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"'{weights}' is not a readable safetensors file ({e}); re-export it from its run.") from None
    if state_hook is not None:
        state = state_hook(state)
    check_weights_match(model, state, weights)
    model.load_state_dict(state, strict=True)
    return model, cfg


def check_weights_match(model: SSLViT, state: dict, weights: Path) -> None:
    """One sentence when ``state`` does not fit ``model`` (torch lists every mismatch: 26 KB for
    a backbone of another size), naming the width when that is what differs."""
    own = model.state_dict()
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    if not (wrong or missing or extra):
        return
    spec = weights.parent / SPEC
    width = state.get("cls_token", state.get("pos_embed"))
    if width is not None and width.shape[-1] != model.embed_dim:
        raise ValueError(f"embed_dim {model.embed_dim} in '{spec}', {width.shape[-1]} in the weights '{weights}': they "
                         "come from different runs; copy the backbone.json written with these weights.")
    what = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the weights, {tuple(own[wrong[0]].shape)} in the model"
            if wrong else f"{(missing or extra)[0]} is {'missing from' if missing else 'extra in'} the weights")
    raise ValueError(f"The weights '{weights}' do not fit the backbone '{spec}' describes ({len(wrong)} shapes differ, "
                     f"{len(missing)} missing, {len(extra)} extra; e.g. {what}); copy the backbone.json written with "
                     "these weights.")


def run_data_of(weights: Path) -> str:
    """The ``data`` a run was trained on, from the ``config.yaml`` beside its weights ('digits' if none)."""
    cfg_file = weights.parent / "config.yaml"
    if cfg_file.is_file():
        return yaml.safe_load(cfg_file.read_text()).get("data", "digits")
    return "digits"


OFFICIAL_VIT = {"model.stem": "linear", "model.reg_tokens": 0, "model.init_values": "null", "model.parallel": 1}


def run_groups(run: str | Path, to: str) -> dict:
    """The run's weights as ``checkpoint_layouts`` groups: for ``dino`` its newest checkpoint (the
    whole objective: student, teacher, heads and center), for ``mae`` the checkpoint's backbone
    and decoder when it has one; otherwise the exported backbone (DINO's teacher)."""
    weights = resolve_backbone_path(run)
    ckpt = newest_checkpoint_weights(weights.parent)
    backbone = {"backbone": load_file(str(weights))}
    groups = from_sslvit_checkpoint(load_file(str(ckpt))).groups if ckpt is not None and to != "timm" else {}
    if to == "dino" and "backbone" in groups:
        return groups
    if to == "mae" and "mae_decoder" in groups:  # the decoder with the encoder it was trained with
        return {"backbone": groups["backbone"], "mae_decoder": groups["mae_decoder"]}
    return backbone


def check_official_vit(backbone: dict, to: str) -> None:
    """The official MAE and DINO code builds a plain ViT: linear stem, no registers, LayerScale or parallel blocks."""
    shape = backbone_shape(backbone)
    off = [f"{k} {shape[k]}" for k, v in OFFICIAL_VIT.items() if shape[k] != v]
    if off:
        raise WeightsError(f"This backbone ({', '.join(off)}) has no official {to.upper()} layout: the official "
                           "code builds a plain ViT with a linear stem; export it --to timm (timm builds it from "
                           "backbone.json).")


FIX_OUT = "pass a file path in a folder you can write to"


def export_run(run: str | Path, to: str, out: str | Path) -> list[str]:
    """Write the run's weights in ``to``'s layout at ``out`` (whole or not at all); -> lines to print."""
    groups, out = run_groups(run, to), Path(out).expanduser()
    if to == "timm":
        meta = {"format": "pt", "producer": "sslvit"}
        written(out, lambda: save_safetensors_atomic(to_timm(groups), out, metadata=meta), FIX_OUT)
        spec = resolve_backbone_path(run).parent / SPEC
        return [f"Wrote {out} (timm ViT state dict, {len(groups['backbone'])} tensors); it loads with strict=True into "
                f"timm.create_model(**spec), spec being the 'timm' entry of {spec}."]
    check_official_vit(groups["backbone"], to)
    obj = to_mae(groups) if to == "mae" else to_dino(groups)

    def write() -> None:
        with atomic_path(out) as tmp:
            try:  # the official scripts read torch pickles; tensors only, so weights_only=True opens it
                torch.save(obj, tmp)
            except RuntimeError as e:  # torch.save's words for a write cut short: "unexpected pos 64 vs 0"
                raise OSError(errno.EIO, f"torch.save could not write its file; {free_on_its_disk(tmp.parent)}") from e
    written(out, write, FIX_OUT)
    parts = ", ".join(f"{k} ({len(v)} tensors)" for k, v in obj.items())
    reader = {"mae": "main_finetune.py --finetune", "dino": "eval_knn.py / eval_linear.py --pretrained_weights"}[to]
    return [f"Wrote {out} (official {to.upper()} layout: {parts}); the official {reader} reads it."]


def import_backbone(path, out_dir) -> list[str]:
    """A weights file's backbone (any layout ``--init`` reads; DINO's teacher) as an sslvit backbone
    in ``out_dir`` (``backbone.safetensors`` + ``backbone.json``, at the file's own image size),
    so every probe reads it as a run's; -> the lines saying what was found."""
    imported = import_file(path)
    if "backbone" not in imported.groups:
        raise WeightsError(f"'{path}' ({imported.layout}) holds no backbone; pass a file with one.")
    groups = imported.groups
    state = groups.get("teacher_backbone", groups["backbone"])  # DINO evaluates its teacher
    cfg = backbone_config_of(state)
    model = build_backbone(cfg)
    lines = load_imported(model, {"backbone": model}, Imported(imported.layout, {"backbone": state}, imported.unused))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        export_backbone(model, cfg, out_dir)
    except OSError as e:
        raise WeightsError(f"The imported backbone cannot be written to '{out_dir}' ({e.strerror or e}); copy the "
                           "weights file into a folder you can write to.") from None
    what = "the teacher's backbone" if "teacher_backbone" in groups else "its backbone"
    return lines + [f"{what} imported as {out_dir}/ (ViT-{cfg.size[0].upper()}/{cfg.patch_size}, depth {cfg.depth}, "
                    f"{cfg.img_size} px); the probe's results go there too."]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sslvit.models.export",
                                 description="Write a run's weights in the layout timm or the official MAE / DINO "
                                             "code reads (see the README's 'Start from existing weights').")
    ap.add_argument("run", help="a run directory (or its backbone.safetensors)")
    ap.add_argument("--to", required=True, choices=("timm", "mae", "dino"), help="the layout to write")
    ap.add_argument("out", help="the file to write")
    args = ap.parse_args(argv)
    try:
        if not Path(args.run).expanduser().exists():
            raise FileNotFoundError(f"No run at '{args.run}'; pass a run directory (it holds backbone.safetensors once "
                                    "the run has ended) or its backbone.safetensors.")
        lines = export_run(args.run, args.to, args.out)
    except (ValueError, OSError) as e:  # FileNotFoundError and PermissionError among them
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(lines))


if __name__ == "__main__":
    main()
