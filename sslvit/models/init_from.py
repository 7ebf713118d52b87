"""Imported weights into a run's modules (``--init``, the probes' ``--weights``).

Each group the file has (``checkpoint_layouts``) goes into the module the run names for it, with
``strict=True`` once its position table is fitted to the run's grid; a shape that cannot map is
one sentence naming the keys to change. A teacher group the file lacks starts as a copy of the
student's; everything else the run has and the file lacks keeps its fresh initialisation, and
the lines returned say which is which.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from sslvit.models.backbone_config import VIT_SIZES, BackboneConfig
from sslvit.models.checkpoint_layouts import Imported, WeightsError

LINEAR_INTO_HMLP = ("The file's patch stem is linear (patch_embed.proj.weight, one projection) and this run's "
                    "model.stem is hmlp, a stack of three convolutions that cannot take it; pass --model.stem linear")


def backbone_shape(state: dict) -> dict:
    """What a ViT state dict says about the architecture, as the ``model.*`` keys that build it
    (the width gives the size; heads cannot be read from weights, so they are the size's)."""
    hmlp = "patch_embed.proj.0.weight" in state
    width = state["cls_token"].shape[-1]
    size = next((n for n, (w, _, _) in VIT_SIZES.items() if w == width), f"none of {sorted(VIT_SIZES)} (width {width})")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    parallel = {m.group(1) for k in state if (m := re.match(r"blocks\.0\.attns\.(\d+)\.", k))}
    patch = state["patch_embed.proj.0.weight"].shape[-1] * 4 if hmlp else state["patch_embed.proj.weight"].shape[-1]
    return {"model.size": size, "model.depth": max(blocks) + 1, "model.parallel": max(len(parallel), 1),
            "model.patch_size": patch, "model.stem": "hmlp" if hmlp else "linear",
            "model.stem_norm": "layer" if "patch_embed.proj.1.weight" in state else "none",
            "model.reg_tokens": state["reg_token"].shape[1] if "reg_token" in state else 0,
            "model.init_values": "set" if any(re.search(r"\.ls\d?\.gamma$", k) for k in state) else "null"}


def table_grid(rows: int, prefix: int) -> tuple[int, int] | None:
    """(prefix rows it has, grid side) of a square position table of ``rows`` rows for ``prefix``
    prefix tokens: all prefix rows, cls only (DINOv2's registers carry none) or none (timm's
    ``no_embed_class``); None when none of these leaves a square grid."""
    for have in (prefix, 1, 0):
        if rows > have and math.isqrt(rows - have) ** 2 == rows - have:
            return have, math.isqrt(rows - have)
    return None


def backbone_config_of(state: dict) -> BackboneConfig:
    """The ``BackboneConfig`` that builds the backbone of ``state``: learned positions at the
    file's own grid (heads: the size's)."""
    shape = backbone_shape(state)
    if shape["model.size"] not in VIT_SIZES:
        raise WeightsError(f"The file's backbone has width {state['cls_token'].shape[-1]}, which is none of sslvit's "
                           f"sizes ({', '.join(f'{n} {w}' for n, (w, _, _) in VIT_SIZES.items())}).")
    _, side = table_grid(state["pos_embed"].shape[1], 1 + shape["model.reg_tokens"]) or (0, 1)
    return BackboneConfig(size=shape["model.size"], depth=shape["model.depth"], parallel=shape["model.parallel"],
                          patch_size=shape["model.patch_size"], stem=shape["model.stem"],
                          stem_norm=shape["model.stem_norm"], pos_embed="learned",
                          img_size=side * shape["model.patch_size"], reg_tokens=shape["model.reg_tokens"],
                          init_values=1.0e-5 if shape["model.init_values"] == "set" else None)


def check_backbone(file_state: dict, run_state: dict, group: str = "backbone") -> None:
    """One sentence naming the ``model.*`` keys to pass when the file's ViT is another architecture."""
    want, have = backbone_shape(file_state), backbone_shape(run_state)
    if want["model.stem"] == "linear" and have["model.stem"] == "hmlp":
        raise WeightsError(f"{LINEAR_INTO_HMLP}.")
    diffs = [k for k in want if want[k] != have[k]]
    if not diffs:
        return
    fix = {"model.init_values": lambda v: "1.0e-5 (the file's LayerScale gammas replace it)" if v == "set" else "null"}
    told = "; ".join(f"{k} {want[k]} in the file, {have[k]} in this run" for k in diffs)
    passes = " ".join(f"--{k} {fix.get(k, str)(want[k])}" for k in diffs)
    raise WeightsError(f"The file's {group} is another architecture than this run's ({told}); pass {passes}.")


def fit_pos_table(table: torch.Tensor, prefix: int, rows: int) -> tuple[torch.Tensor, str | None]:
    """A position table (1, R, D) -> (1, rows, D) with ``prefix`` leading rows (cls, registers);
    prefix rows the file lacks (``table_grid``) are zeros (no position = adding zero). The patch
    part is resampled (bicubic, timm's ``resample_abs_pos_embed``) when the grids differ.
    Returns the table and a note when it was resampled."""
    n, want = table.shape[1], math.isqrt(rows - prefix)
    found = table_grid(n, prefix)
    if found is None or want ** 2 != rows - prefix:
        raise WeightsError(f"A position table of {n} rows is no square grid after {prefix} prefix rows; the "
                           "file's backbone cannot map onto this run's.")
    have, side = found
    head = torch.cat([table[:, :have], table.new_zeros(1, prefix - have, table.shape[-1])], 1)
    patches = table[:, have:]
    note = None
    if side != want:
        from timm.layers import resample_abs_pos_embed  # lazily: a run without --init never needs timm here

        patches = resample_abs_pos_embed(patches.float(), new_size=[want, want], old_size=[side, side],
                                         num_prefix_tokens=0).to(table.dtype)
        note = f"position table resampled from {side}x{side} to {want}x{want} (bicubic)"
    return torch.cat([head, patches], 1), note


def check_fits(group: str, state: dict, own: dict) -> None:
    """One sentence when a group's keys or shapes differ from the module's, naming the first."""
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    if not (wrong or missing or extra):
        return
    what = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} in this run"
            if wrong else f"{(missing or extra)[0]} is {'missing from' if missing else 'extra in'} the file")
    shape = {"mae_decoder": decoder_shape, "dino_head": head_shape}.get(group.removeprefix("teacher_"))
    want, have = (shape(state), shape(own)) if shape else ({}, {})
    passes = " ".join(f"--{k} {v}" for k, v in want.items() if have.get(k) != v)
    fix = f"pass {passes}" if passes else "the file's shapes are none this run's keys build"
    raise WeightsError(f"The file's {group} does not fit this run's ({len(wrong)} shapes differ, {len(missing)} "
                       f"missing, {len(extra)} extra; e.g. {what}); {fix}.")


def decoder_shape(state: dict) -> dict:
    """MAE decoder's ``mae.*`` keys as its state shows them (heads cannot be read from weights)."""
    blocks = {m.group(1) for k in state if (m := re.match(r"decoder_blocks\.(\d+)\.", k))}
    return {"mae.decoder_dim": state["decoder_embed.weight"].shape[0], "mae.decoder_depth": len(blocks)}


def head_shape(state: dict) -> dict:
    """DINO head's ``dino.*`` keys as its state (sslvit names) shows them."""
    linears = sorted(int(m.group(1)) for k, v in state.items() if (m := re.match(r"mlp\.(\d+)\.weight$", k))
                     and v.dim() == 2)
    v = state["last_layer.parametrizations.weight.original1"]  # (K, bottleneck)
    out = {"dino.out_dim": v.shape[0], "dino.bottleneck_dim": v.shape[1], "dino.head_layers": len(linears),
           "dino.use_bn_in_head": str(any(k.endswith("running_mean") for k in state)).lower()}
    if len(linears) > 1:
        out["dino.hidden_dim"] = state[f"mlp.{linears[0]}.weight"].shape[0]
    return out


def fit_group(group: str, state: dict, module: nn.Module) -> tuple[dict, list[str]]:
    """``state`` made loadable into ``module``: the architecture checked, position tables fitted."""
    own, notes, state = module.state_dict(), [], dict(state)
    if group.endswith("backbone"):
        check_backbone(state, own, group)
    prefix = getattr(module, "num_prefix_tokens", 1)
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state and key in own:
            state[key], note = fit_pos_table(state[key], prefix, own[key].shape[1])
            notes += [f"{group}: {note}"] if note else []
    check_fits(group, state, own)
    return state, notes


def load_imported(root: nn.Module, targets: dict[str, nn.Module], imported: Imported) -> list[str]:
    """Load ``imported`` into ``targets`` (group name -> a module inside ``root``); -> the lines
    that say what was loaded, copied, left fresh and not used."""
    loaded, notes, groups = {}, [], dict(imported.groups)
    if "teacher_backbone" in groups and "teacher_backbone" not in targets:
        groups["backbone"] = groups.pop("teacher_backbone")  # what DINO evaluates and ships
        notes.append("backbone: the file's teacher (DINO's evaluated backbone), not its student")
    for group, module in targets.items():
        if group in groups:
            state, more = fit_group(group, groups[group], module)
            module.load_state_dict(state, strict=True)
            loaded[group], notes = module, notes + more
    copies = []
    for group, module in targets.items():
        student = group.removeprefix("teacher_")
        if group not in loaded and student != group and student in targets:
            module.load_state_dict(targets[student].state_dict(), strict=True)  # DINO's start: teacher = student
            copies.append(group)
    lines = [f"{imported.layout} found; loaded {', '.join(loaded) or 'nothing'}."]
    lines += notes
    lines += [f"{', '.join(copies)}: the student's copy (the file has no teacher)."] if copies else []
    fresh = fresh_entries(root, [*loaded.values(), *(targets[g] for g in copies)])
    lines += [f"initialised fresh (not in the file): {', '.join(fresh)}."] if fresh else []
    unused = [g for g in groups if g not in targets] + imported.unused
    lines += [f"in the file, not used by this run: {', '.join(unused)}."] if unused else []
    return lines


def fresh_entries(root: nn.Module, loaded) -> list[str]:
    """The shortest names of ``root``'s state that hold nothing ``loaded`` took (``decoder``,
    ``student.head``), in order."""
    taken = {id(t) for m in loaded for t in m.state_dict(keep_vars=True).values()}
    names = root.state_dict(keep_vars=True)
    loaded_names = [k for k, t in names.items() if id(t) in taken]
    out = []
    for key, t in names.items():
        if id(t) in taken:
            continue
        parts = key.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if not any(k == prefix or k.startswith(prefix + ".") for k in loaded_names):
                break
        if sum(k.startswith(prefix + ".") for k in names) == 1:
            prefix = key  # a lone tensor by its own name (loss.center)
        if prefix not in out:
            out.append(prefix)
    return out

