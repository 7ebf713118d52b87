"""Several objectives on one backbone in one step: loss = sum of weight x each part's loss.

The parts are built on the same ``SSLViT`` instance, so every step trains it with all of them
(MAE + DINO: the encoder runs on MAE's visible patches for the one and on the crops for the
other). Each part gets its own piece of the batch (``data.transforms.CompositeTransform`` and
``data.collates.CompositeCollate`` build it from the parts' own), every hook reaches
every part in order, and each part's outputs are logged under its name (``mae.loss``,
``dino.teacher_entropy``). A composite of one part trains exactly as that part alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sslvit.objectives.base import Objective, StepInfo


class Composite(Objective):
    """``forward({name: that part's batch})`` -> {"loss": sum of weight x part loss, "NAME.KEY": ...}."""

    def __init__(self, parts: dict[str, Objective], weights: dict[str, float], export: str):
        super().__init__()
        if not parts:
            raise ValueError("A composite objective needs at least one part with a weight above 0.")
        if export not in parts:
            raise ValueError(f"composite export '{export}' is not one of the parts ({', '.join(parts)}).")
        backbones = {id(p.backbone) for p in parts.values()}
        if len(backbones) != 1:
            raise ValueError("The parts of a composite objective must be built on one backbone instance.")
        self.parts = nn.ModuleDict(parts)
        self.weights, self.export = dict(weights), export

    @property
    def backbone(self):
        return self.parts[self.export].backbone

    def exported_backbone(self):
        return self.parts[self.export].exported_backbone()

    def no_weight_decay(self) -> set[str]:
        """Each part's names, as this module names the same parameters (a shared one has one name)."""
        names = {id(p): name for name, p in self.named_parameters()}
        out = set()
        for part in self.parts.values():
            for name in part.no_weight_decay():
                out.add(names.get(id(part.get_parameter(name)), name))
        return out

    def init_targets(self) -> dict[str, nn.Module]:
        """Every part's, merged (the shared backbone is one target)."""
        out = {}
        for part in self.parts.values():
            out.update(part.init_targets())
        return out

    def forward(self, batch: dict) -> dict:
        out, loss = {}, None
        for name, part in self.parts.items():
            result = part(batch[name])
            term = self.weights[name] * result["loss"]
            loss = term if loss is None else loss + term
            out.update({f"{name}.{k}": v.detach() for k, v in result.items()})
        return {"loss": loss, **out}

    def on_epoch_start(self, epoch: int) -> None:
        for part in self.parts.values():
            part.on_epoch_start(epoch)

    def before_micro_batch(self, info: StepInfo) -> None:
        for part in self.parts.values():
            part.before_micro_batch(info)

    def before_optimizer_step(self, info: StepInfo) -> None:
        for part in self.parts.values():
            part.before_optimizer_step(info)

    def after_optimizer_step(self, info: StepInfo) -> None:
        for part in self.parts.values():
            part.after_optimizer_step(info)

    def check_health(self, record: dict) -> list[str]:
        warnings = []
        for name, part in self.parts.items():
            own = {k[len(name) + 1:]: v for k, v in record.items() if k.startswith(f"{name}.")}
            warnings += [f"{name}: {w}" for w in part.check_health(own)]
        return warnings

    def pictures(self, imgs: torch.Tensor):
        for part in self.parts.values():  # the first part that draws any
            columns = part.pictures(imgs)
            if columns is not None:
                return columns
        return None
