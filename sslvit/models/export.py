"""The exported backbone: ``backbone.safetensors`` (timm parameter names) + ``backbone.json``."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from sslvit.models.vit import BackboneConfig, SSLViT, build_backbone, timm_spec
from sslvit.files import save_safetensors_atomic, write_json_atomic

WEIGHTS = "backbone.safetensors"
SPEC = "backbone.json"


def export_backbone(backbone: SSLViT, cfg: BackboneConfig, out_dir: Path, state: dict | None = None) -> Path:
    """Write ``backbone.json`` and ``backbone.safetensors`` (the classifier head left out);
    ``state`` replaces ``backbone.state_dict()`` (FSDP gathers it from the shards)."""
    spec = timm_spec(cfg)
    spec["embed_layer"] = f"{spec['embed_layer'].__module__}.{spec['embed_layer'].__name__}"
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
        raise PermissionError(f"'{path}' cannot be reached (permission denied on a folder above it); give this user "
                              "read and execute rights on the run folder, or copy the run somewhere readable.") from None
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
        cfg = BackboneConfig(**json.loads(spec.read_text())["backbone"])
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
