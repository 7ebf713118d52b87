"""The key layouts of the checkpoints people already have, and sslvit's own, as pure dict functions.

A file is read (safetensors, or ``torch.load(weights_only=True)``), its layout is told from its
keys, and it becomes *groups*: plain state dicts named by what they initialise, with sslvit's
(= timm's) parameter names:

    backbone           the ViT (timm names: patch_embed.proj.*, cls_token, reg_token, pos_embed, blocks.N.*, norm.*)
    mae_decoder        MAE's decoder (decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.N.*,
                       decoder_norm, decoder_pred with rows in sslvit's (C, P, P) order)
    dino_head          DINO's projection head (mlp.N.*, last_layer.parametrizations.weight.original0/1)
    teacher_backbone, teacher_dino_head   DINO's EMA teacher
    dino_center        DINO's center ({"center": (1, K)})

and back (``to_timm``, ``to_mae``, ``to_dino``). Key names and shapes follow the official code:
facebookresearch/mae ``models_mae.py`` (``MaskedAutoencoderViT``; ``main_pretrain.py`` saves
``{'model': state_dict, ...}``), facebookresearch/dino ``main_dino.py`` (``save_dict`` with
``student`` (DDP: ``module.``), ``teacher``, ``dino_loss``) and ``vision_transformer.py``
(``DINOHead``: ``mlp``, ``last_layer`` under ``nn.utils.weight_norm``: ``weight_g``, ``weight_v``),
facebookresearch/dinov2 ``dinov2/models/vision_transformer.py`` (``register_tokens`` without
position rows, ``mask_token`` (1, D), ``blocks`` optionally chunked ``blocks.C.N``, LayerScale
``ls1.gamma`` / ``ls2.gamma``).
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

LOOKED_FOR = ("a timm ViT state dict (patch_embed.proj.weight, cls_token, blocks.0.*), an sslvit backbone.safetensors "
              "or run checkpoint, an official MAE checkpoint ({'model': ...} with patch_embed and optionally "
              "decoder_embed), an official DINO checkpoint ({'student': ..., 'teacher': ...}) or a DINOv2 backbone "
              "(register_tokens or mask_token beside the ViT keys)")


class WeightsError(ValueError):
    """A weights file (``--init``, ``--weights``, export) that cannot be read or does not fit the run;
    the message names the file or the keys, and the fix."""


MAE_DECODER_KEYS = ("decoder_embed.", "mask_token", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.",
                    "decoder_pred.")


@dataclass
class Imported:
    """A file turned into groups (see the module docstring); ``unused`` names what no group takes."""
    layout: str
    groups: dict[str, dict[str, torch.Tensor]]
    unused: list[str] = field(default_factory=list)


def read_weights(path: str | Path) -> dict:
    """The file's contents as nested dicts of tensors: safetensors, or a torch pickle opened with
    ``weights_only=True`` (argparse's Namespace allowed: the official MAE and DINO scripts save
    their ``args`` beside the weights)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at '{path}'; pass --init / --weights an existing checkpoint file.")
    try:
        with open(path, "rb") as f:
            is_safetensors = f.read(9)[8:9] == b"{"  # an 8-byte header length, then the JSON header
        if is_safetensors or path.suffix == ".safetensors":
            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))  # torch names the class it refused
        why = f"a {found.group(1)}" if found else "an object that is not a tensor"
        raise WeightsError(f"'{path}' holds more than weights and is not opened (weights_only=True refused {why}); "
                           "save its state dict alone (torch.save(model.state_dict(), ...)) or as safetensors."
                           ) from None
    except (SafetensorError, RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"'{path}' is neither a safetensors file nor a torch checkpoint that loads ({e}); "
                           "check that the download or copy is complete.") from None


def _take(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _drop_prefix(state: dict, prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _tensors(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def is_vit(state: dict) -> bool:
    return "cls_token" in state and any(k.startswith("patch_embed.proj") for k in state) and \
        any(re.match(r"blocks\.0\.", k) for k in state)


def import_layout(raw: dict, source: str = "the file") -> Imported:
    """Tell the layout of ``raw`` (what ``read_weights`` returned) from its keys and convert it."""
    if not isinstance(raw, dict):
        raise WeightsError(f"{source} holds a {type(raw).__name__}, not a dict of weights; it matches none of the "
                           f"layouts sslvit reads: {LOOKED_FOR}.")
    if isinstance(raw.get("student"), dict) and isinstance(raw.get("teacher"), dict):
        return from_official_dino(raw)
    if isinstance(raw.get("model"), dict) and is_vit(_drop_prefix(raw["model"], "module.")):
        return from_official_mae(_drop_prefix(raw["model"], "module."))
    state = raw.get("state_dict", raw) if isinstance(raw.get("state_dict"), dict) else raw
    if _tensors(state):
        state = _drop_prefix(state, "module.")
        if any(k.startswith(("backbone.", "student.backbone.", "parts.")) for k in state):
            return from_sslvit_checkpoint(state)  # or a DINO teacher saved alone: backbone.* + head.*
        if is_vit(state) and ("register_tokens" in state or "mask_token" in state):
            return from_dinov2(state)
        if is_vit(state):
            stem = "hMLP" if "patch_embed.proj.0.weight" in state else "linear"
            classifier = [k for k in state if k.startswith(("head.", "fc_norm."))]
            return Imported(f"timm ViT state dict ({stem} stem)",
                            {"backbone": {k: v for k, v in state.items() if k not in classifier}},
                            unused=[f"{k} (a classifier)" for k in classifier])
    top = ", ".join(sorted(map(str, raw))[:6])
    raise WeightsError(f"{source} matches none of the layouts sslvit reads (its top-level keys: {top}); looked for "
                       f"{LOOKED_FOR}.")


def from_dinov2(state: dict) -> Imported:
    """DINOv2's backbone -> sslvit's: chunked blocks flattened, ``register_tokens`` -> timm's
    ``reg_token`` with zero position rows after cls (DINOv2 adds no position to registers, so zero
    rows give the same tokens), ``mask_token`` left out (reported unused)."""
    out = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items() if k != "mask_token"}
    regs = out.pop("register_tokens", None)
    if regs is not None:
        out["reg_token"] = regs
        pos = out["pos_embed"]
        out["pos_embed"] = torch.cat([pos[:, :1], pos.new_zeros(1, regs.shape[1], pos.shape[-1]), pos[:, 1:]], 1)
    what = f"{regs.shape[1]} registers" if regs is not None else "no registers"
    ls = "LayerScale" if "blocks.0.ls1.gamma" in out else "no LayerScale"
    patch = out["patch_embed.proj.weight"].shape[-1]
    return Imported(f"DINOv2 backbone (patch {patch}, {what}, {ls})", {"backbone": out},
                    unused=["mask_token (DINOv2's, (1, D))"] if "mask_token" in state else [])


def decoder_pred_from_official(t: torch.Tensor, patch: int, chans: int) -> torch.Tensor:
    """decoder_pred weight (P*P*C, D) or bias (P*P*C,): rows in the official (P, P, C) order ->
    sslvit's (C, P, P) (``SSLViT.patchify``)."""
    rest = t.shape[1:]
    return t.reshape(patch, patch, chans, *rest).permute(2, 0, 1, *range(3, 3 + len(rest))).reshape(t.shape)


def decoder_pred_to_official(t: torch.Tensor, patch: int, chans: int) -> torch.Tensor:
    rest = t.shape[1:]
    return t.reshape(chans, patch, patch, *rest).permute(1, 2, 0, *range(3, 3 + len(rest))).reshape(t.shape)


def _stem_geometry(backbone: dict) -> tuple[int, int]:
    """(patch size, input channels) of a linear-stem backbone state."""
    w = backbone["patch_embed.proj.weight"]
    return w.shape[-1], w.shape[1]


def from_official_mae(model: dict) -> Imported:
    """``MaskedAutoencoderViT.state_dict()``: the encoder keys are timm's; the decoder's are
    sslvit's ``MAEDecoder`` names, ``decoder_pred`` rows reordered."""
    decoder = {k: v for k, v in model.items() if k.startswith(MAE_DECODER_KEYS)}
    backbone = {k: v for k, v in model.items() if k not in decoder}
    groups = {"backbone": backbone}
    if decoder:
        p, c = _stem_geometry(backbone)
        for k in ("decoder_pred.weight", "decoder_pred.bias"):
            decoder[k] = decoder_pred_from_official(decoder[k], p, c)
        groups["mae_decoder"] = decoder
    return Imported("official MAE checkpoint" + (" (encoder and decoder)" if decoder else " (encoder only)"), groups)


def head_from_official(head: dict) -> dict:
    """DINO's ``DINOHead`` keys -> sslvit's: ``last_layer.weight_g`` / ``weight_v`` (the old
    ``nn.utils.weight_norm``) -> torch's parametrization ``original0`` / ``original1``; a one-layer
    ``mlp`` (a bare Linear there) -> ``mlp.0``."""
    names = {"last_layer.weight_g": "last_layer.parametrizations.weight.original0",
             "last_layer.weight_v": "last_layer.parametrizations.weight.original1"}
    return {names.get(k, re.sub(r"^mlp\.(weight|bias)$", r"mlp.0.\1", k)): v for k, v in head.items()}


def head_to_official(head: dict) -> dict:
    names = {"last_layer.parametrizations.weight.original0": "last_layer.weight_g",
             "last_layer.parametrizations.weight.original1": "last_layer.weight_v"}
    single = not any(re.match(r"mlp\.[1-9]", k) for k in head)
    return {names.get(k, re.sub(r"^mlp\.0\.(weight|bias)$", r"mlp.\1", k) if single else k): v
            for k, v in head.items()}


def from_official_dino(raw: dict) -> Imported:
    """``main_dino.py``'s ``save_dict``: student (under DDP's ``module.``) and teacher, each
    ``backbone.*`` + ``head.*``, and ``dino_loss`` with the center."""
    groups, unused = {}, []
    for name, prefix in (("student", ""), ("teacher", "teacher_")):
        part = _drop_prefix(raw[name], "module.")
        backbone, head = _take(part, "backbone."), _take(part, "head.")
        if not is_vit(backbone):
            raise WeightsError(f"The DINO checkpoint's '{name}' has no ViT backbone (no backbone.cls_token / "
                               "backbone.patch_embed.proj.*); it matches none of the layouts sslvit reads.")
        groups[f"{prefix}backbone"] = backbone
        if head:
            groups[f"{prefix}dino_head"] = head_from_official(head)
        unused += [f"{name}.{k}" for k in part if not k.startswith(("backbone.", "head."))]
    center = raw.get("dino_loss", {}).get("center") if isinstance(raw.get("dino_loss"), dict) else None
    if center is not None:
        groups["dino_center"] = {"center": center}
    return Imported("official DINO checkpoint (student, teacher" + (", heads" if "dino_head" in groups else "")
                    + (", center" if center is not None else "") + ")", groups, unused)


# where each group sits in an sslvit objective's state dict (a composite's parts under parts.NAME.;
# safetensors keeps one name of a tensor shared by two parts, so either may be the one written)
SSLVIT_PREFIXES = {"backbone": ("backbone.", "student.backbone."), "mae_decoder": ("decoder.",),
                   "dino_head": ("student.head.",), "teacher_backbone": ("teacher.module.backbone.",),
                   "teacher_dino_head": ("teacher.module.head.",), "dino_center": ("loss.",)}


def from_sslvit_checkpoint(state: dict) -> Imported:
    """An sslvit run checkpoint's ``model.safetensors`` (the whole objective) -> groups; also a
    DINO-style ``backbone.*`` + ``head.*`` dict (a teacher saved alone, weight_g / weight_v)."""
    flat = {re.sub(r"^parts\.\w+\.", "", k): v for k, v in state.items()}
    if "head.last_layer.weight_g" in flat:
        return Imported("DINO backbone and head (backbone.*, head.*)",
                        {"backbone": _take(flat, "backbone."), "dino_head": head_from_official(_take(flat, "head."))})
    groups = {}
    for group, prefixes in SSLVIT_PREFIXES.items():
        for prefix in prefixes:
            taken = _take(flat, prefix)
            if taken and group not in groups:
                groups[group] = taken
    if "dino_center" in groups:
        groups["dino_center"] = {"center": groups["dino_center"]["center"]}
    return Imported(f"sslvit run checkpoint ({', '.join(groups)})", groups)


def to_timm(groups: dict) -> dict:
    """The backbone a timm ``VisionTransformer`` of the same spec loads with ``strict=True``."""
    return dict(groups["backbone"])


def to_mae(groups: dict) -> dict:
    """``{'model': ...}`` as ``main_pretrain.py`` saves it (and ``main_finetune.py`` reads it): the
    encoder, and the decoder when there is one, ``decoder_pred`` rows back in (P, P, C) order."""
    model = dict(groups["backbone"])
    decoder = dict(groups.get("mae_decoder", {}))
    if decoder:
        p, c = _stem_geometry(model) if "patch_embed.proj.weight" in model else (None, None)
        if p is None:
            raise WeightsError("an hMLP-stem backbone has no official MAE layout (MAE's stem is linear); export it "
                               "--to timm and load it with sslvit's HMLPStem as timm's embed_layer.")
        if decoder["decoder_pred.bias"].numel() != p * p * c:  # mae.target luma: P*P grey values a patch
            raise WeightsError("this MAE decoder regresses luma (mae.target luma), which the official MAE (RGB "
                               "targets) cannot read; export the backbone --to timm instead.")
        for k in ("decoder_pred.weight", "decoder_pred.bias"):
            decoder[k] = decoder_pred_to_official(decoder[k], p, c)
    return {"model": {**model, **decoder}}


def to_dino(groups: dict) -> dict:
    """``main_dino.py``'s layout: ``student`` with ``module.`` (DDP), ``teacher`` without, each
    ``backbone.*`` + ``head.*`` (weight_g / weight_v), and ``dino_loss.center`` when there is one.
    The official ``utils.load_pretrained_weights(..., 'teacher')`` strips the prefixes itself."""
    out = {}
    for name, prefix, ddp in (("student", "", "module."), ("teacher", "teacher_", "")):
        backbone = groups.get(f"{prefix}backbone", groups["backbone"])
        head = groups.get(f"{prefix}dino_head", groups.get("dino_head", {}))
        out[name] = {**{f"{ddp}backbone.{k}": v for k, v in backbone.items()},
                     **{f"{ddp}head.{k}": v for k, v in head_to_official(head).items()}}
    if "dino_center" in groups:
        out["dino_loss"] = {"center": groups["dino_center"]["center"]}
    return out


def newest_checkpoint_weights(run_dir: Path) -> Path | None:
    """``model.safetensors`` of a run's newest complete checkpoint (``meta.json`` written last;
    newest by step), or None. The training loop's own listing lives above this layer."""
    metas = []
    for meta in Path(run_dir).glob("checkpoints/epoch_*/meta.json"):
        weights = meta.parent / "model.safetensors"
        if weights.is_file():
            metas.append((json.loads(meta.read_text()).get("step", 0), meta.parent.name, weights))
    return max(metas)[2] if metas else None


def import_file(path: str | Path) -> Imported:
    """Read and convert a weights file; a run directory gives its newest checkpoint (the whole
    objective: decoder, heads, teacher), or its ``backbone.safetensors`` when it has none."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = newest_checkpoint_weights(path) or (path / "backbone.safetensors")
        if not found.is_file():
            raise FileNotFoundError(f"'{path}' is a folder with neither checkpoints/ nor backbone.safetensors; pass a "
                                    "run directory or a weights file.")
        path = found
    imported = import_layout(read_weights(path), f"'{path}'")
    if imported.layout.startswith("timm") and _producer(path) == "sslvit":
        imported.layout = imported.layout.replace("timm ViT state dict", "sslvit backbone.safetensors")
    return imported


def _producer(path: Path) -> str | None:
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("producer")
    except Exception:  # not a safetensors file: a torch pickle has no producer
        return None
