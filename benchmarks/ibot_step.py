"""Images/s of one iBOT training step on CPU: sslvit's ``IBOT`` vs the same step built from lightly's
parts (``MaskedVisionTransformerTIMM``, ``DINOProjectionHead``, ``DINOLoss``, ``IBOTPatchLoss``,
as lightly's DINOv2 example assembles them).

Configuration: ViT-S/16 (learned position embedding, dynamic image size, student drop path 0.1,
teacher 0), 2 global crops of --img px + 6 local crops of --local-img px, batch B (images/s counts
the B images), one shared head 384 -> 2048 -> 2048 -> 256 -> K = 8192 for cls and patch tokens
(iBOT's ViT-S recipe), the same fixed masks for both (half the global crops unmasked, the rest
block-masked at U(0.1, 0.5), drawn once). One step = teacher forward on the 2 global crops (cls
and every patch through the head), student forward on the masked global crops and the local ones
(cls, and the masked patches through the head), DINO cls loss + iBOT patch loss, backward,
per-parameter clipping (max norm 3), AdamW step, zero_grad, EMA teacher update. Configurations are
timed round-robin (--warmup, then --steps timed steps each, median reported).

  sslvit:  ``IBOT`` driven as the training loop drives it (before_micro_batch, forward,
           backward, clip_grad_per_param_, before_optimizer_step, fused AdamW from build_adamw,
           zero_grad, after_optimizer_step); its masks are drawn in the forward (keyed per crop)
           as in training, so the timing includes them.
  lightly: the student and teacher wrapped in MaskedVisionTransformerTIMM (its ``encode`` with
           ``mask`` puts the mask token in), DINOProjectionHead, lightly's DINOLoss on the cls
           outputs, IBOTPatchLoss on the masked patches, torch.optim.AdamW (default
           implementation) over the student's parameters, update_momentum for the EMA.

lightly is NOT a project dependency; run this from the benchmark venv (see benchmarks/mae_step.py):

    /tmp/lightlyvenv/bin/python benchmarks/ibot_step.py [--batch 16 --steps 3 --threads 2]
    # smoke: --batch 2 --steps 1 --warmup 0 --img 32 --local-img 16 --out-dim 1024 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch
import torch.nn as nn

from flops import print_machine, time_round_robin
from sslvit.masking import keyed_crop_masks
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.base import StepInfo
from sslvit.objectives.dino import DINOConfig
from sslvit.objectives.ibot import IBOT, IBOTConfig
from sslvit.train.optim import build_adamw, clip_grad_per_param_

try:
    import lightly
    import timm
    from lightly.loss import DINOLoss, IBOTPatchLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
    from lightly.models.utils import deactivate_requires_grad, update_momentum
except ImportError:  # the project's own venv: sslvit only
    lightly = None

D, HID, BOT, N_GLOBAL, N_LOCAL, CLIP, WD = 384, 2048, 256, 2, 6, 3.0, 0.04
TOTAL, PER_EPOCH = 1000, 100


def sslvit_step(K: int, lr: float, groups: list[torch.Tensor]):
    def backbone(dpr: float):
        return build_backbone(BackboneConfig(size="small", patch_size=16, img_size=groups[0].shape[-1],
                                             pos_embed="learned", dynamic_img_size=True, drop_path_rate=dpr))
    ibot = IBOT(backbone(0.1), backbone(0.0), DINOConfig(out_dim=K, norm_last_layer=False),
                IBOTConfig(shared_head=True)).train()
    opt = build_adamw(ibot, lr, WD, betas=(0.9, 0.999))
    B, state = groups[0].shape[0] // 2, {"step": 0}

    def step() -> float:
        info = StepInfo(step=state["step"], micro=0, epoch=1, total_steps=TOTAL, steps_per_epoch=PER_EPOCH,
                        key=0, rows=slice(0, B), global_size=B)  # key 0: every step draws the same masks
        ibot.before_micro_batch(info)
        out = ibot(groups)
        out["loss"].backward()
        clip_grad_per_param_(ibot.parameters(), CLIP)
        ibot.before_optimizer_step(info)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out["loss"].item()
        ibot.after_optimizer_step(info)
        state["step"] += 1
        return loss
    return step


class LightlyIBOT(nn.Module):
    def __init__(self, K: int, img: int):
        super().__init__()
        vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=img,
                                dynamic_img_size=True, drop_path_rate=0.1)
        self.student = MaskedVisionTransformerTIMM(vit=vit)
        with warnings.catch_warnings():  # the head uses the deprecated nn.utils.weight_norm
            warnings.simplefilter("ignore")
            self.student_head = DINOProjectionHead(D, HID, BOT, K, freeze_last_layer=1, norm_last_layer=False)
            self.teacher_head = DINOProjectionHead(D, HID, BOT, K, norm_last_layer=False)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.teacher = copy.deepcopy(self.student)
        for m in self.teacher.modules():
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
        deactivate_requires_grad(self.teacher)
        deactivate_requires_grad(self.teacher_head)


def lightly_step(K: int, lr: float, groups: list[torch.Tensor], masks: torch.Tensor):
    model = LightlyIBOT(K, groups[0].shape[-1]).train()
    dino_loss, patch_loss = DINOLoss(output_dim=K, warmup_teacher_temp_epochs=0), IBOTPatchLoss(output_dim=K)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WD, betas=(0.9, 0.999))
    side = groups[0].shape[-1] // 16
    mask_hw = masks.view(-1, side, side)
    with_cls = torch.cat([torch.zeros(len(masks), 1, dtype=torch.bool), masks], 1)  # lightly masks the token sequence
    views = list(groups[0].chunk(N_GLOBAL)) + list(groups[1].chunk(N_LOCAL))

    def step() -> float:
        update_momentum(model.student, model.teacher, m=0.996)
        update_momentum(model.student_head, model.teacher_head, m=0.996)
        with torch.no_grad():
            t_tokens = model.teacher.encode(groups[0])
            t_cls, t_patch = model.teacher_head(t_tokens[:, 0]), model.teacher_head(t_tokens[:, 1:][masks])
        s_tokens = model.student.encode(groups[0], mask=with_cls)
        s_cls = [model.student_head(s_tokens[:, 0])] + [model.student_head(model.student.encode(v)[:, 0])
                                                        for v in views[N_GLOBAL:]]
        s_patch = model.student_head(s_tokens[:, 1:][masks])
        loss = dino_loss(list(t_cls.chunk(N_GLOBAL)), list(s_cls[0].chunk(N_GLOBAL)) + s_cls[1:], epoch=1) + \
            patch_loss(t_patch, s_patch, mask_hw)
        loss.backward()
        clip_grad_per_param_(params, CLIP)
        model.student_head.cancel_last_layer_gradients(current_epoch=1)
        opt.step()
        opt.zero_grad()
        return loss.item()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dim", type=int, default=8192)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--local-img", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, K, lr = args.batch, args.out_dim, 5e-4 * args.batch / 256
    print_machine(f"lightly {lightly.__version__ if lightly else '-'} | batch {B}, crops {N_GLOBAL}x{args.img} + "
                  f"{N_LOCAL}x{args.local_img}, K {K} (shared head), fp32, steps {args.steps} (+{args.warmup} warm-up)")
    torch.manual_seed(0)
    groups = [torch.randn(N_GLOBAL * B, 3, args.img, args.img), torch.randn(N_LOCAL * B, 3, args.local_img,
                                                                            args.local_img)]
    side = args.img // 16
    masks = keyed_crop_masks(0, slice(0, B), N_GLOBAL, (side, side), 0.3, 0.2, 0.5, 16.0, 0.3)
    print(f"masked: {int(masks.sum())} of {masks.numel()} global-crop patches ({masks.float().mean():.1%})")
    configs = {"sslvit ibot fp32": sslvit_step(K, lr, groups)}
    if lightly is not None:
        configs["lightly ibot fp32"] = lightly_step(K, lr, groups, masks)
    else:
        print("lightly is not importable: set up the benchmark venv (see this file's docstring).")
    times = time_round_robin(configs, args.steps, args.warmup)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name in configs:
        print(f"{name:18s} median {med[name]:7.3f} s/step  {B / med[name]:7.2f} img/s  "
              f"[steps: {' '.join(f'{t:.3f}' for t in times[name])}]")
    if len(med) == 2:
        print(f"sslvit / lightly: {med['lightly ibot fp32'] / med['sslvit ibot fp32']:.2f}x the images per second")


if __name__ == "__main__":
    main()
