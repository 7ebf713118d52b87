"""iBOT: image BERT pre-training with online tokenizer (Zhou et al. 2022; bytedance/ibot).

DINO's cls-token self-distillation plus masked-patch self-distillation. The student sees the
global crops with block-masked patches replaced by a learned mask token at the encoder input
(``SSLViT.encode(mask=...)``); the teacher sees them whole. For every masked patch the student's
patch distribution matches the teacher's centred, sharpened one at the same place and view
(cross-entropy), averaged per image over its masked patches, then over the images; the patch
outputs have their own centre. The cls loss is DINO's, on the student's masked global crops and
its local crops. ``shared_head`` sends cls and patch tokens through one projection head (iBOT's
ViT-S recipe); otherwise the patches get their own (``patch_out_dim`` prototypes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslvit.masking import keyed_crop_masks, scaled_min_block
from sslvit.objectives.base import StepInfo
from sslvit.objectives.dino import DINO, DINOConfig, HeadedViT, ema_to_window_mean

if TYPE_CHECKING:
    from sslvit.models.vit import SSLViT


@dataclass
class IBOTConfig:
    weight: float = 1.0  # lambda2, the patch loss's weight (the cls loss has 1.0)
    shared_head: bool = True  # cls and patch tokens through one head (iBOT ViT-S); False: a patch head of its own
    patch_out_dim: int = 8192  # prototypes of a separate patch head (a shared head has dino.out_dim)
    teacher_patch_temp: float = 0.07
    warmup_teacher_patch_temp: float = 0.04  # warmed up over dino.warmup_teacher_temp_epochs, as the cls one
    center_momentum: float = 0.9
    mask_ratio: float = 0.3  # iBOT's pred_ratio: a masked crop hides U(ratio - var, ratio + var) of its patches
    mask_ratio_var: float = 0.2
    mask_probability: float = 0.5  # share of global crops that are masked at all
    min_block: float = 16.0  # smallest block in patches at a 14 x 14 grid (scaled to the run's grid)
    min_aspect: float = 0.3

    def validate(self) -> None:
        lo, hi = self.mask_ratio - self.mask_ratio_var, self.mask_ratio + self.mask_ratio_var
        if not (0.0 <= lo and hi < 1.0):
            raise ValueError(f"ibot.mask_ratio {self.mask_ratio} +- ibot.mask_ratio_var {self.mask_ratio_var} must "
                             "stay within [0, 1); iBOT's are 0.3 and 0.2.")
        if not 0.0 < self.mask_probability <= 1.0:
            raise ValueError(f"ibot.mask_probability must be in (0, 1] (got {self.mask_probability}); with 0 no "
                             "patch is ever masked and the patch loss is nothing.")


def ibot_patch_loss(student_masked: torch.Tensor, teacher_masked: torch.Tensor, masks: torch.Tensor,
                    center: torch.Tensor, student_temp: float, teacher_temp) -> torch.Tensor:
    """student_masked, teacher_masked (M, K): logits at the M masked patches of V global crops, in
    the order of ``tensor[masks]``; masks (V, N) bool; center (1, 1, K) -> the mean over the V crops
    of each crop's mean cross-entropy over its masked patches (0 for a crop with none, as in iBOT).
    Only masked places are computed: each counts 1 / (V * its crop's masked count)."""
    teacher = F.softmax((teacher_masked.float() - center[0]) / teacher_temp, dim=-1)
    student = F.log_softmax(student_masked.float() / student_temp, dim=-1)
    per_patch = -(teacher * student).sum(-1)  # (M,)
    counts = masks.sum(-1, keepdim=True).expand_as(masks)[masks]  # each masked patch's crop's count
    return (per_patch / counts).sum() / masks.shape[0]


class PatchCenter(nn.Module):
    """The patch outputs' centre: once per optimizer step, EMA towards the mean over the step's
    crops (every micro-batch and process) of each crop's mean patch output."""

    def __init__(self, out_dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))
        self.register_buffer("window_sum", torch.zeros(1, 1, out_dim), persistent=False)
        self.register_buffer("window_count", torch.zeros(()), persistent=False)

    @torch.no_grad()
    def add(self, teacher_patch: torch.Tensor) -> None:
        """teacher_patch (V, N, K)."""
        self.window_sum += teacher_patch.float().mean(1).sum(0)[None, None]
        self.window_count += teacher_patch.shape[0]

    @torch.no_grad()
    def update(self) -> None:
        ema_to_window_mean(self.center, self.window_sum, self.window_count, self.momentum)
        self.reset()

    def reset(self) -> None:
        self.window_sum.zero_()
        self.window_count.zero_()


class IBOT(DINO):
    """Objective: ``forward(groups)``, DINO's crop groups; the masks of the global crops are drawn
    here, keyed by each image's row in the step's global batch (``keyed_crop_masks``): the same
    however the batch is split over processes and micro-batches, and on a mid-epoch resume."""

    def __init__(self, student: SSLViT, teacher: SSLViT, cfg: DINOConfig, icfg: IBOTConfig):
        self.icfg = icfg  # read by with_heads, which DINO's constructor calls
        super().__init__(student, teacher, cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, student.embed_dim))  # iBOT's masked_embed
        out_dim = cfg.out_dim if icfg.shared_head else icfg.patch_out_dim
        self.patch_center = PatchCenter(out_dim, icfg.center_momentum)
        self.register_buffer("teacher_patch_temp", torch.tensor(icfg.warmup_teacher_patch_temp), persistent=False)

    def with_heads(self, backbone: SSLViT) -> HeadedViT:
        headed = super().with_heads(backbone)
        if not self.icfg.shared_head:
            headed.patch_head = self.head(backbone.embed_dim, self.icfg.patch_out_dim)
        return headed

    def _patch_head(self, headed: HeadedViT) -> nn.Module:
        # a shared head is the cls head itself (not registered twice: one tensor, one name)
        return headed.head if self.icfg.shared_head else headed.patch_head

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def _student(self, groups: list[torch.Tensor], masks: torch.Tensor):
        """-> cls logits of every crop (view-major, globals first), patch logits (M, K) of the M masked
        patches, the global crops' cls features (2B, D)."""
        s = self.student
        tokens = s.backbone.encode(groups[0], mask=masks, mask_token=self.mask_token)
        cls = [tokens[:, 0]] + [s.backbone.forward_features(x)[:, 0] for x in groups[1:]]
        patches = tokens[:, s.backbone.num_prefix_tokens:][masks]  # only the masked patches are scored
        return s.head(torch.cat(cls)), self._patch_head(s)(patches), tokens[:, 0]

    @torch.no_grad()
    def _teacher(self, globals_: torch.Tensor):
        t = self.teacher.module
        tokens = t.backbone.forward_features(globals_)
        patches = tokens[:, t.backbone.num_prefix_tokens:]
        # flattened: the head's BatchNorm (dino.use_bn_in_head) takes (M, C)
        out = self._patch_head(t)(patches.flatten(0, 1)).unflatten(0, patches.shape[:2])
        return t.head(tokens[:, 0]), out

    batch_key = None  # (seed key, this micro-batch's rows), set before each forward

    @torch.compiler.disable  # Python draws per crop
    def draw_masks(self, globals_: torch.Tensor) -> torch.Tensor:
        """globals_ (2B, C, G, G) -> (2B, N) bool, view-major like the crops."""
        p, i = self.backbone.patch_size, self.icfg
        grid = (globals_.shape[2] // p, globals_.shape[3] // p)
        b = globals_.shape[0] // 2
        key, rows = self.batch_key if self.training and self.batch_key is not None else (None, slice(0, b))
        return keyed_crop_masks(key, rows, 2, grid, i.mask_ratio, i.mask_ratio_var, i.mask_probability,
                                scaled_min_block(i.min_block, grid[0] * grid[1]), i.min_aspect).to(globals_.device)

    def forward(self, groups: list[torch.Tensor]) -> dict:
        masks = self.draw_masks(groups[0])
        n_views = sum(g.shape[0] for g in groups) // (groups[0].shape[0] // 2)
        teacher_cls, teacher_patch = self._teacher(groups[0])  # (2B, K), (2B, N, K)
        student_cls, student_masked, global_features = self._student(groups, masks)
        cls_loss, entropy = self.loss(student_cls, teacher_cls, n_views, self.teacher_temp)
        patch_loss = ibot_patch_loss(student_masked, teacher_patch[masks], masks, self.patch_center.center,
                                     self.cfg.student_temp, self.teacher_patch_temp)
        self.patch_center.add(teacher_patch)
        out = {"loss": cls_loss + self.icfg.weight * patch_loss, "cls_loss": cls_loss.detach(),
               "patch_loss": patch_loss.detach(), "teacher_entropy": entropy.detach(),
               "kl": (cls_loss - entropy).detach(), "masked_share": masks.float().mean()}
        return self.add_koleo(out, global_features)

    def before_micro_batch(self, info: StepInfo) -> None:
        super().before_micro_batch(info)
        self.batch_key = (info.key, info.rows)
        c, i = self.cfg, self.icfg
        warmup = c.warmup_teacher_temp_epochs * info.steps_per_epoch
        t = i.teacher_patch_temp if info.step >= warmup else \
            i.warmup_teacher_patch_temp + (i.teacher_patch_temp - i.warmup_teacher_patch_temp) * info.step / warmup
        self.teacher_patch_temp.fill_(t)
        if info.micro == 0:
            self.patch_center.reset()

    def before_optimizer_step(self, info: StepInfo) -> None:
        super().before_optimizer_step(info)
        if info.epoch < self.cfg.freeze_last_layer:  # iBOT cancels every head's last layer
            for p in self._patch_head(self.student).last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        self.patch_center.update()
        super().after_optimizer_step(info)
