"""The exported backbone: ``backbone.safetensors`` (timm parameter names) + ``backbone.json``."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from sslvit.models.vit import BackboneConfig, SSLViT, build_backbone, timm_spec
from sslvit.train.checkpoint import save_safetensors_atomic, write_json_atomic

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


def resolve_backbone_path(path: str | Path) -> Path:
    """A run directory or a ``backbone.safetensors`` path -> the weights file (checked)."""
    p = Path(path).expanduser()
    weights = p / WEIGHTS if p.is_dir() else p
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
    return BackboneConfig(**json.loads((weights.parent / SPEC).read_text())["backbone"])


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
    model.load_state_dict(state, strict=True)
    return model, cfg


def run_data_of(weights: Path) -> str:
    """The ``data`` a run was trained on, from the ``config.yaml`` beside its weights ('digits' if none)."""
    cfg_file = weights.parent / "config.yaml"
    if cfg_file.is_file():
        return yaml.safe_load(cfg_file.read_text()).get("data", "digits")
    return "digits"
