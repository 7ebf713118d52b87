"""DINO: self-distillation with no labels (Caron et al. 2021; facebookresearch/dino).

A student (backbone + projection head) sees every crop; a teacher, the EMA of the student,
sees the two global crops only. The student matches the teacher's centred, sharpened softmax
over K prototypes with a cross-entropy over every (teacher view, other student view) pair.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from sslvit.objectives.base import Objective, StepInfo
from sslvit.runtime.schedules import cosine_schedule

if TYPE_CHECKING:
    from sslvit.models.vit import SSLViT


@dataclass
class DINOConfig:
    out_dim: int = 65536  # K, the number of prototypes
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False  # BatchNorm after each hidden layer (DINO's --use_bn_in_head)
    norm_last_layer: bool = True  # fix the last layer's weight-norm gain to 1 (more stable)
    freeze_last_layer: int = 1  # epochs during which the last layer gets no update
    momentum_teacher: float = 0.996  # start of the cosine EMA schedule, which ends at momentum_teacher_end
    momentum_teacher_end: float = 1.0
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0  # linear per-step warmup from warmup_teacher_temp
    center_momentum: float = 0.9
    centering: str = "center"  # center (DINO's EMA centre) | sinkhorn (DINOv2's Sinkhorn-Knopp, 3 iterations)
    koleo_weight: float = 0.0  # DINOv2's KoLeo regulariser on the student's global cls features (0.1 in DINOv2)
    collapse_window: int = 10  # logged steps in a row before the collapse guard warns
    collapse_low: float = 0.05  # teacher entropy / log K below this: collapsed to few prototypes
    collapse_high: float = 0.95  # ... above this: uniform (centering won over sharpening)


def teacher_temperature(step: int, steps_per_epoch: int, cfg: DINOConfig) -> float:
    """Linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warmup epochs, then constant."""
    warmup_steps = cfg.warmup_teacher_temp_epochs * steps_per_epoch
    if step >= warmup_steps:
        return cfg.teacher_temp
    return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * step / warmup_steps


def teacher_momentum(step: int, total_steps: int, base: float = 0.996, end: float = 1.0) -> float:
    """Momentum applied after optimizer step ``step`` (0-based): cosine from ``base`` to ``end`` (DINO's 1)."""
    return cosine_schedule(step, total_steps, base, end)


class HeadBatchNorm(nn.BatchNorm1d):
    """(M, C) -> (M, C): ``BatchNorm1d`` that normalises in its running statistics' dtype (fp32) when
    its weight and bias come in another. FSDP's mixed precision casts a module's parameters to bf16 and
    leaves its buffers in fp32, a mix torch's ``batch_norm`` refuses ("expected scalar type BFloat16 but
    found Float"); under autocast the parameters stay fp32 and this is ``BatchNorm1d`` itself. The
    output keeps the input's dtype; the state dict is ``BatchNorm1d``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.running_mean.dtype
        if self.weight is None or self.weight.dtype == dtype:
            return super().forward(x)
        momentum = 0.0  # read only in training: eval mode normalises with the running statistics
        if self.training:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(x.to(dtype), self.running_mean, self.running_var, self.weight.to(dtype),
                           self.bias.to(dtype), self.training, momentum, self.eps)
        return out.to(x.dtype)


class DINOHead(nn.Module):
    """(M, D) -> (M, K): MLP -> l2-normalised bottleneck -> weight-normed linear, no bias."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"dino.head_layers must be >= 1 (got {nlayers}).")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers += [HeadBatchNorm(dims[i + 1])] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # (K, 1): the weight-norm g
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.mlp:
            x = rows_in_buckets(layer, x) if isinstance(layer, nn.Linear) else layer(x)
        return rows_in_buckets(self.last_layer, F.normalize(x, dim=-1))


# On the CPU, oneDNN builds a matmul kernel per shape and keeps the last 1024 (its primitive cache). iBOT's
# patch head takes a different number of masked patches nearly every step: a few hundred row counts, each
# with its forward and backward kernels, more than the cache holds, so a run kept rebuilding evicted kernels
# (its epochs slowed from 30 to 37 s over 12 epochs on 2 cores; benchmarks/head_shapes.py). Zero rows up to
# a multiple of ROW_BUCKET leave a handful of shapes. Only the linear layers see them: the head's BatchNorm
# takes the real rows alone, so its batch statistics are unchanged.
ROW_BUCKET = 64


def rows_in_buckets(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for x (M, D_in) -> (M, D_out), computed on x padded with zero rows to a multiple of
    ``ROW_BUCKET`` (the zero rows add nothing to the weight's gradient)."""
    pad = -x.shape[0] % ROW_BUCKET
    if pad == 0:
        return linear(x)
    return linear(F.pad(x, (0, 0, 0, pad)))[: x.shape[0]]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019, as DINOv2 uses it): x (B, D) -> -mean_i log(d_i + eps), d_i
    the distance from l2-normalised x_i to its nearest other row. Spreads the features over the
    sphere. A batch of one has no neighbour: 0 (DINOv2 gives NaN there, dinov2 #314)."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = dots.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()


class HeadedViT(nn.Module):
    """Backbone + DINO head. ``forward(groups)``: list of (n_r * B, C, s_r, s_r) -> (sum n_r * B, K)."""

    def __init__(self, backbone: SSLViT, head: DINOHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, groups: list[torch.Tensor], with_features: bool = False):
        """-> head outputs (sum n_r * B, K); with ``with_features`` also the cls features (sum n_r * B, D)."""
        # one backbone pass per resolution (the local crops' grid interpolates the position table)
        cls = torch.cat([self.backbone.forward_features(x)[:, 0] for x in groups])
        return (self.head(cls), cls) if with_features else self.head(cls)


@torch.no_grad()
def ema_to_window_mean(center: torch.Tensor, window_sum: torch.Tensor, window_count: torch.Tensor,
                       momentum: float) -> None:
    """center <- m * center + (1 - m) * window_sum / window_count, both summed over all processes
    first (one CPU process has no group, and needs none); nothing when the window is empty."""
    total, count = window_sum.clone(), window_count.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    if count > 0:
        center.mul_(momentum).add_(total / count, alpha=1 - momentum)


SINKHORN_ITERATIONS = 3  # DINOv2's


@torch.no_grad()
def sinkhorn_knopp(teacher_out: torch.Tensor, temp, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """DINOv2's teacher centring (Caron et al. 2020's SwAV transport): teacher_out (M, K) logits ->
    (M, K) probabilities whose rows sum to 1 and whose columns (prototypes) share the mass equally,
    over the rows of every process. exp(t / temp) normalised to mass 1, then ``iterations`` times:
    each prototype's mass to 1 / K, each row's to 1 / M_all; times M_all."""
    distributed = dist.is_available() and dist.is_initialized()
    t = teacher_out.float()
    top = t.max()
    if distributed:  # one shift for every process: it cancels in the normalisation, and exp cannot overflow
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp((t - top) / temp).t()  # (K, M)
    rows = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if distributed:
        dist.all_reduce(total)
        dist.all_reduce(rows)
    q /= total
    for _ in range(iterations):
        per_prototype = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(per_prototype)
        q /= per_prototype * q.shape[0]
        q /= q.sum(dim=0, keepdim=True) * rows
    return (q * rows).t()


class DINOLoss(nn.Module):
    """Cross-entropy between teacher and student views, skipping same-view pairs; owns the center.

    The center moves once per optimizer step, by the mean teacher output of the step's whole
    batch (every micro-batch of an accumulation window, every process): ``forward`` only adds
    to the window's sum and ``update_center()`` applies it. Accumulating 2 x B/2 then equals B."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "center"):
        super().__init__()
        if centering not in ("center", "sinkhorn"):
            raise ValueError(f"dino.centering '{centering}' is unknown; use center (DINO) or sinkhorn (DINOv2).")
        self.student_temp, self.centering = student_temp, centering
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("window_sum", torch.zeros(1, out_dim), persistent=False)
        self.register_buffer("window_count", torch.zeros(()), persistent=False)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, n_views: int,
                teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """student_out (n_views * B, K), teacher_out (2 * B, K), both view-major.
        Returns (loss, mean teacher entropy in nats); adds the teacher outputs to the center's window."""
        student = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_views)
        if self.centering == "sinkhorn":  # batch-wise: it replaces the EMA centre
            teacher_p = sinkhorn_knopp(teacher_out, teacher_temp)
        else:
            teacher_p = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1)
        total, n_terms = 0.0, 0
        for iq, q in enumerate(teacher_p.chunk(2)):
            for v in range(n_views):
                if v == iq:  # the student never predicts the teacher's output of the same view
                    continue
                total = total + torch.sum(-q * student[v], dim=-1).mean()
                n_terms += 1
        entropy = -(teacher_p * torch.log(teacher_p.clamp_min(1e-30))).sum(-1).mean()
        with torch.no_grad():
            self.window_sum += teacher_out.float().sum(dim=0, keepdim=True)
            self.window_count += teacher_out.shape[0]
        return total / n_terms, entropy

    @torch.no_grad()
    def update_center(self) -> None:
        """center <- m * center + (1 - m) * mean teacher output of the window (over all processes, if
        several); then a new window starts."""
        ema_to_window_mean(self.center, self.window_sum, self.window_count, self.center_momentum)
        self.reset_window()

    def reset_window(self) -> None:
        self.window_sum.zero_()
        self.window_count.zero_()


class CollapseGuard:
    """Warns when the teacher entropy stays near 0 (collapse to few prototypes) or near log K
    (uniform output) for ``window`` logged steps in a row; warns once per episode."""

    def __init__(self, out_dim: int, window: int = 10, low: float = 0.05, high: float = 0.95):
        self.log_k = math.log(out_dim)
        self.low, self.high = low, high
        self.recent = deque(maxlen=window)
        self.raised: Optional[str] = None

    def update(self, entropy: float) -> Optional[str]:
        ratio = entropy / self.log_k
        state = "collapsed" if ratio < self.low else "uniform" if ratio > self.high else "healthy"
        self.recent.append(state)
        if state == "healthy":
            self.raised = None
        if len(self.recent) < self.recent.maxlen or len(set(self.recent)) != 1 or state in ("healthy", self.raised):
            return None
        self.raised = state
        n = self.recent.maxlen
        if state == "collapsed":
            return (f"the teacher output has collapsed onto a few prototypes (entropy {entropy:.3f} of at most "
                    f"{self.log_k:.2f} nats for {n} logged steps); raise dino.teacher_temp or lengthen "
                    "dino.warmup_teacher_temp_epochs, keep dino.freeze_last_layer >= 1, or lower dino.out_dim.")
        return (f"the teacher output is uniform (entropy {entropy:.3f} of at most {self.log_k:.2f} nats for {n} "
                "logged steps), so the student learns nothing; lower dino.teacher_temp, lower dino.out_dim, or "
                "raise dino.freeze_last_layer.")


class DINO(Objective):
    """Objective: ``forward(groups)`` with groups = [globals (2B, C, G, G), locals (nB, C, L, L)]."""

    def __init__(self, student: SSLViT, teacher: SSLViT, cfg: DINOConfig):
        from timm.utils import ModelEmaV3  # here, not at the top: --help needs no timm

        super().__init__()
        for name in ("momentum_teacher", "momentum_teacher_end"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"dino.{name} {getattr(cfg, name)} is not an EMA momentum; pick one in 0..1 "
                                 "(DINO: 0.996 rising to 1).")
        self.cfg = cfg
        self.student = self.with_heads(student)
        teacher = self.with_heads(teacher)
        teacher.load_state_dict(self.student.state_dict())  # the teacher starts as the student
        # ModelEmaV3 copies it once. As in DINO, the teacher is in train mode when the student is (a
        # BatchNorm head normalises with batch statistics in both); it is built without drop path.
        self.teacher = ModelEmaV3(teacher, decay=cfg.momentum_teacher, exclude_buffers=True)
        self.teacher.requires_grad_(False)
        self.loss = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum, cfg.centering)
        self.guard = CollapseGuard(cfg.out_dim, cfg.collapse_window, cfg.collapse_low, cfg.collapse_high)
        # a tensor, so a compiled forward reads its value instead of recompiling at every new one
        self.register_buffer("teacher_temp", torch.tensor(teacher_temperature(0, 1, cfg)), persistent=False)

    def head(self, in_dim: int, out_dim: int) -> DINOHead:
        c = self.cfg
        return DINOHead(in_dim, out_dim, hidden_dim=c.hidden_dim, bottleneck_dim=c.bottleneck_dim,
                        nlayers=c.head_layers, norm_last_layer=c.norm_last_layer, use_bn=c.use_bn_in_head)

    def with_heads(self, backbone: SSLViT) -> "HeadedViT":
        """The backbone with its projection head(s); built alike for student and teacher."""
        return HeadedViT(backbone, self.head(backbone.embed_dim, self.cfg.out_dim))

    @property
    def backbone(self) -> SSLViT:
        return self.student.backbone

    def exported_backbone(self) -> SSLViT:
        return self.teacher.module.backbone  # DINO evaluates (and ships) the teacher

    def init_targets(self) -> dict[str, nn.Module]:
        """A file without a teacher starts it as the student's copy (``load_imported``), as DINO does."""
        teacher = self.teacher.module
        return {"backbone": self.student.backbone, "dino_head": self.student.head, "teacher_backbone": teacher.backbone,
                "teacher_dino_head": teacher.head, "dino_center": self.loss}

    def forward(self, groups: list[torch.Tensor]) -> dict:
        n_views = sum(g.shape[0] for g in groups) // (groups[0].shape[0] // 2)
        with torch.no_grad():
            teacher_out = self.teacher.module(groups[:1])  # the global crops only
        student_out, features = self.student(groups, with_features=True)
        loss, entropy = self.loss(student_out, teacher_out, n_views, self.teacher_temp)
        # KL(teacher || student) averaged over the pairs = cross-entropy - teacher entropy
        out = {"loss": loss, "teacher_entropy": entropy.detach(), "kl": (loss - entropy).detach(),
               "teacher_temp": self.teacher_temp.detach().clone()}
        return self.add_koleo(out, features[:groups[0].shape[0]])

    def add_koleo(self, out: dict, global_features: torch.Tensor) -> dict:
        """``out`` with ``koleo_weight`` x KoLeo of each global view's cls features added to the loss."""
        if not self.cfg.koleo_weight:
            return out
        koleo = sum(koleo_loss(view) for view in global_features.chunk(2))  # per view, summed (DINOv2)
        return {**out, "loss": out["loss"] + self.cfg.koleo_weight * koleo, "koleo": koleo.detach()}

    def before_micro_batch(self, info: StepInfo) -> None:
        self.teacher_temp.fill_(teacher_temperature(info.step, info.steps_per_epoch, self.cfg))
        if info.micro == 0:  # a new optimizer step's window: drop what a skipped step left behind
            self.loss.reset_window()

    def before_optimizer_step(self, info: StepInfo) -> None:
        if info.epoch < self.cfg.freeze_last_layer:
            for p in self.student.head.last_layer.parameters():
                p.grad = None  # AdamW skips a parameter without a gradient: no update, no decay

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        self.loss.update_center()
        self.teacher.decay = teacher_momentum(info.step, info.total_steps, self.cfg.momentum_teacher,
                                             self.cfg.momentum_teacher_end)
        self.teacher.update(self.student)

    def check_health(self, record: dict) -> list[str]:
        warning = self.guard.update(record["teacher_entropy"]) if "teacher_entropy" in record else None
        return [warning] if warning else []

    @torch.no_grad()
    def pictures(self, imgs: torch.Tensor):
        """The teacher's last-block cls attention per head over ``imgs`` (B, C, H, W)."""
        from sslvit.models.attention_maps import attention_columns  # imports timm: kept off --help's path

        return attention_columns(self.exported_backbone(), imgs)
