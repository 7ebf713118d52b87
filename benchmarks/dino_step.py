"""Images/s of one DINO training step on CPU: sslvit (hMLP / linear stem) vs lightly's DINO.

Configuration: ViT-S/16 (learned position embedding, dynamic image size, student drop path 0.1,
teacher 0), 2 global crops of --img px + 6 local crops of --local-img px, batch B (images/s counts
the B images, not the 8B crops), head 384 -> 2048 -> 2048 -> 256 -> K (weight-normed last layer),
fp32 (and bf16 autocast on CPUs with native bf16).
One step = student forward on every crop + teacher forward on the 2 global crops, DINO loss,
backward, per-parameter gradient clipping (max norm 3), optimizer step, zero_grad, EMA teacher
update. The configurations are timed round-robin (--warmup steps, then --steps timed steps each,
median reported) so machine noise hits each equally.

  sslvit:  ``DINO`` driven exactly as ``sslvit.train.loop.pretrain`` drives it (before_micro_batch, lr/wd
           into the param groups, forward on [globals (2B), locals (6B)], backward, clip_grad_per_param_,
           before_optimizer_step (epoch 1), fused AdamW from build_adamw, zero_grad, loss.item(),
           after_optimizer_step); in fp32, and under bf16 autocast where the CPU has native bf16 (then lightly
           too, as Lightning's bf16-mixed runs it). sslvit's default is what ``train.precision
           auto`` picks from this run's own timings.
  lightly: lightly's DINO example loop (examples/pytorch/dino.py): update_momentum at the start of
           the step, teacher and student called once per view ([B, C, s, s] each), DINOLoss on the
           per-view lists, cancel_last_layer_gradients, torch.optim.AdamW with torch's default
           implementation over model.parameters() (lr, weight decay 0.04 and betas as sslvit's).
           Differences from the example, for identical math: the backbone is timm's
           vit_small_patch16_224, the teacher head (a second DINOProjectionHead, as in the example: the
           old-style weight_norm head cannot be deepcopied) starts from the student head's weights
           instead of its own random init, and gradients are clipped per parameter with the same
           ``clip_grad_per_param_`` as sslvit (the example does not clip; DINO's recipe does, and using
           one implementation keeps clipping out of the comparison).

lightly is NOT a project dependency; run this from the benchmark venv (see benchmarks/mae_step.py):

    python3 -m venv /tmp/lightlyvenv
    /tmp/lightlyvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm lightly
    /tmp/lightlyvenv/bin/pip install -e .     # from the repo root
    /tmp/lightlyvenv/bin/python benchmarks/dino_step.py [--batch 16 --steps 3 --threads 2]
    # smoke: --batch 2 --steps 1 --warmup 0 --img 32 --local-img 16 --out-dim 1024 --threads 1

FLOP model (matmul FLOPs only, 2 * MACs; backward = 2x forward, so a trained pass counts 3x its
forward and the teacher's forward-only pass 1x; softmax, norms, the loss's elementwise products, the
weight-norm and the EMA are not counted):
  block(T, D)  = T*D*3D (qkv) + T*T*D (QK^T) + T*T*D (AV) + T*D*D (proj) + 2*T*D*4D (fc1, fc2)
  stem, per patch (P=16, C=3): linear = C*P*P*D; hMLP (kernel == stride convs as matmuls,
               h = D/4) = 16*(C*4*4)*h + 4*(4h)*h + 1*(4h)*D
  head         = D*2048 + 2048*2048 + 2048*256 + 256*K
  view(s)      = N*stem + 12*block(N + 1, 384) + head, N = (s/16)^2: T = 197 at 224 px, 37 at 96 px
  step         = 2 * B * (3 * (2*view(img) + 6*view(local)) + 2*view(img))
Both run the stem on every patch, so lightly's step has the FLOPs of sslvit's linear-stem step.
At B = 16, K = 65536, 224/96 px: 1.667 TFLOP/step (hMLP), 1.662 TFLOP/step (linear, lightly).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import timm
import torch
import torch.nn as nn
from timm.layers import DropPath

from flops import (block_macs, default_precision, matmul_peak, peak_fractions, print_machine, stem_macs,
                   time_round_robin)  # benchmarks/flops.py
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.base import StepInfo
from sslvit.objectives.dino import DINO, DINOConfig
from sslvit.train.optim import build_adamw, clip_grad_per_param_

try:
    import lightly
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule as lightly_cosine
except ImportError:
    lightly = None

D, DEPTH, HID, BOT, N_GLOBAL, N_LOCAL, CLIP, WD = 384, 12, 2048, 256, 2, 6, 3.0, 0.04
TOTAL, PER_EPOCH = 1000, 100  # schedule lengths the hooks see; the values do not affect timing


def step_flops(batch: int, stem: str, K: int, img: int, local: int) -> int:
    head = D * HID + HID * HID + HID * BOT + BOT * K

    def view(px: int) -> int:
        n = (px // 16) ** 2
        return n * stem_macs(stem, D) + DEPTH * block_macs(n + 1, D) + head

    student, teacher = N_GLOBAL * view(img) + N_LOCAL * view(local), N_GLOBAL * view(img)
    return 2 * batch * (3 * student + teacher)


def sslvit_step(stem: str, K: int, lr: float, groups: list[torch.Tensor], bf16: bool = False):
    def backbone(dpr: float):
        return build_backbone(BackboneConfig(size="small", patch_size=16, img_size=224, pos_embed="learned",
                                             dynamic_img_size=True, drop_path_rate=dpr, stem=stem))
    dino = DINO(backbone(0.1), backbone(0.0), DINOConfig(out_dim=K)).train()
    opt = build_adamw(dino, lr, WD, betas=(0.9, 0.999))
    state = {"step": 0}

    def step() -> float:  # the body of sslvit.train.loop.pretrain's inner loop, one process
        info = StepInfo(step=state["step"], micro=0, epoch=1, total_steps=TOTAL, steps_per_epoch=PER_EPOCH,
                        key=state["step"], rows=slice(0, len(groups[0]) // 2), global_size=len(groups[0]) // 2)
        dino.before_micro_batch(info)
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = lr, WD if group.get("apply_wd", True) else 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = dino(groups)
        out["loss"].backward()
        clip_grad_per_param_(dino.parameters(), CLIP)
        dino.before_optimizer_step(info)  # epoch 1: past freeze_last_layer, the last layer trains
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out["loss"].item()
        dino.after_optimizer_step(info)
        state["step"] += 1
        return loss
    return step


class LightlyDINO(nn.Module):
    """lightly's DINO example model with a timm ViT-S/16 backbone (cls token after the final norm)."""

    def __init__(self, K: int):
        super().__init__()
        self.student_backbone = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                                                  dynamic_img_size=True, drop_path_rate=0.1)
        with warnings.catch_warnings():  # the head uses the deprecated nn.utils.weight_norm
            warnings.simplefilter("ignore")
            self.student_head = DINOProjectionHead(D, HID, BOT, K, freeze_last_layer=1)
            # that weight_norm's cached weight is no graph leaf, so the head cannot be deepcopied:
            # build a second head, as lightly's example does, and start it as the student's copy
            self.teacher_head = DINOProjectionHead(D, HID, BOT, K)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        for m in self.teacher_backbone.modules():  # the teacher copy has drop path rate 0
            if isinstance(m, DropPath):
                m.drop_prob = 0.0
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


def lightly_step(K: int, lr: float, views: list[torch.Tensor], bf16: bool = False):
    model = LightlyDINO(K).train()
    criterion = DINOLoss(output_dim=K, warmup_teacher_temp_epochs=0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WD, betas=(0.9, 0.999))
    state = {"step": 0}

    def step() -> float:  # the body of lightly's example loop
        m = lightly_cosine(state["step"], TOTAL, 0.996, 1)
        update_momentum(model.student_backbone, model.teacher_backbone, m=m)
        update_momentum(model.student_head, model.teacher_head, m=m)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # Lightning's bf16-mixed
            teacher_out = [model.forward_teacher(v) for v in views[:N_GLOBAL]]
            student_out = [model.forward(v) for v in views]
            loss = criterion(teacher_out, student_out, epoch=1)
        loss.backward()
        clip_grad_per_param_(model.parameters(), CLIP)
        model.student_head.cancel_last_layer_gradients(current_epoch=1)
        opt.step()
        opt.zero_grad()
        state["step"] += 1
        return loss.item()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--local-img", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, K, lr = args.batch, args.out_dim, 5e-4 * args.batch / 256
    bf16 = print_machine(f"timm {timm.__version__} | lightly {lightly.__version__ if lightly else '-'} | batch {B}, "
                         f"crops {N_GLOBAL}x{args.img} + {N_LOCAL}x{args.local_img}, K {K}, steps {args.steps} "
                         f"(+{args.warmup} warm-up)")
    if lightly is None:
        print("lightly is not importable: set up the benchmark venv (see this file's docstring). "
              "Only the sslvit configurations run.")

    peak = {"fp32": matmul_peak(torch.float32)}
    if bf16:
        peak["bf16"] = matmul_peak(torch.bfloat16)
    torch.manual_seed(0)
    views = [torch.randn(B, 3, args.img, args.img) for _ in range(N_GLOBAL)] + \
            [torch.randn(B, 3, args.local_img, args.local_img) for _ in range(N_LOCAL)]
    groups = [torch.cat(views[:N_GLOBAL]), torch.cat(views[N_GLOBAL:])]  # view-major, as multicrop_collate
    flops = {s: step_flops(B, s, K, args.img, args.local_img) for s in ("hmlp", "linear")}
    configs = {"sslvit hmlp fp32": (sslvit_step("hmlp", K, lr, groups), flops["hmlp"]),
               "sslvit linear fp32": (sslvit_step("linear", K, lr, groups), flops["linear"])}
    if bf16:
        configs["sslvit hmlp bf16"] = (sslvit_step("hmlp", K, lr, groups, bf16=True), flops["hmlp"])
    if lightly is not None:
        configs["lightly fp32"] = (lightly_step(K, lr, views), flops["linear"])
        if bf16:
            configs["lightly bf16"] = (lightly_step(K, lr, views, bf16=True), flops["linear"])

    times = time_round_robin({name: step for name, (step, _) in configs.items()}, args.steps, args.warmup)
    peak["fp32"] = max(peak["fp32"], matmul_peak(torch.float32))  # best of before and after

    print("\npeak matmul 2048^3: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, (_, f) in configs.items():
        fps = f / med[name]
        print(f"{name:18s} median {med[name]:7.3f} s/step  {B / med[name]:7.2f} img/s  {f / 1e12:.4f} TFLOP/step  "
              f"{fps / 1e9:6.1f} GFLOP/s ({peak_fractions(fps, peak)})  "
              f"[steps: {' '.join(f'{t:.3f}' for t in times[name])}]")
    default = f"sslvit hmlp {default_precision(med['sslvit hmlp fp32'], med.get('sslvit hmlp bf16'))}"
    print(f"\nsslvit default: '{default}' (train.precision auto's rule on this run's timings)")
    if "lightly fp32" in med:
        lt = med["lightly fp32"]
        best = min((n for n in med if n.startswith("lightly")), key=med.get)
        print(f"sslvit hmlp fp32 / lightly fp32:   {lt / med['sslvit hmlp fp32']:.2f}x  (goal >= 1.1x)")
        print(f"sslvit linear fp32 / lightly fp32: {lt / med['sslvit linear fp32']:.2f}x")
        print(f"sslvit default / lightly fp32: {lt / med[default]:.2f}x  (goal >= 1.8x)")
        print(f"sslvit default / lightly at its best ({best}): {med[best] / med[default]:.2f}x  (goal >= 1.3x)")
    for prec, goal in (("fp32", 0.8), ("bf16", 0.7)):
        if f"sslvit hmlp {prec}" in med:
            name = f"sslvit hmlp {prec}"
            print(f"{name} at {configs[name][1] / med[name] / peak[prec]:.0%} of the {prec} matmul peak "
                  f"(goal >= {goal:.0%})")


if __name__ == "__main__":
    main()
