"""Images/s of one MAE training step on CPU: sslvit (hMLP / linear stem) vs lightly's timm MAE.

Configuration: ViT-S/16, 224 px, batch 32, mask ratio 0.75, decoder 512 x 8 blocks x 16 heads,
norm-pix loss, AdamW(lr 1.5e-4 * B / 256, betas (0.9, 0.95), wd 0.05). One step = forward,
backward, optimizer step, zero_grad.

Each configuration runs in a process of its own, as its library runs it: sslvit with what its
training loop sets up (``keep_freed_memory``: glibc keeps freed blocks for reuse instead of
returning them to the kernel and page-faulting them back in every step; fused AdamW), lightly
with glibc's defaults and torch's default AdamW. The processes are stepped in lockstep, one step
of one process at a time, round-robin (``--warmup`` untimed rounds, then ``--steps`` timed ones,
median reported), so machine noise hits each alike. A fifth process runs lightly with sslvit's
allocator setting, which splits the ratio into what the step code and what the allocator give.

lightly is NOT a project dependency; run this from a separate benchmark venv:

    python3 -m venv /tmp/lightlyvenv
    /tmp/lightlyvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm lightly
    /tmp/lightlyvenv/bin/pip install -e .     # from the repo root: sslvit + its deps (torch already satisfied)
    /tmp/lightlyvenv/bin/python benchmarks/mae_step.py [--batch 32 --steps 5 --threads 2]
    .venv/bin/python benchmarks/mae_step.py --profile     # where sslvit's step time goes, and its ceiling

Where the CPU has native bf16 (AVX-512 BF16 / AMX), sslvit and lightly also run under bf16
autocast, and sslvit's default is what ``train.precision auto`` picks from this run's own
timings (the faster of fp32 and bf16, with fp32 kept unless bf16 is 10% faster); the run ends
with 5 steps' losses under bf16 and fp32 (same init, batch, masks). Elsewhere ``--bf16-check``
runs that comparison anyway, emulated and slow. ``--compile`` adds sslvit under
``train.compile inductor``. Goals: sslvit fp32 >= 1.1x lightly fp32; sslvit's default >= 1.3x
lightly at lightly's best precision; >= 80% of the fp32 matmul peak at fp32 and >= 70% of the
bf16 peak at bf16.

FLOP model (matmul FLOPs only, 2 * MACs; a training step counts 3x the forward: backward =
grad-input + grad-weight; this slightly over-counts the first layer, whose input needs no grad):
  block(T, D)   = T*D*3D (qkv) + T*T*D (QK^T) + T*T*D (AV) + T*D*D (proj) + 2*T*D*4D (fc1, fc2)
  stem, per patch (P=16, C=3): linear = C*P*P*D;
                hMLP (convs kernel == stride, as matmuls, hidden h = D/4):
                16 * (C*4*4)*h + 4 * (4h)*h + 1 * (4h)*D
  forward       = S * stem + 12 * block(1 + 49, 384) + (1 + 49)*384*512 (decoder embed)
                  + 8 * block(197, 512) + R * 512*768 (decoder pred)
  sslvit:  stem on the S = 49 visible patches only, pred on R = 196 patches.
  lightly: patch_embed runs on all S = 196 patches before masking; pred on the R = 147 masked ones.
"""
from __future__ import annotations

import argparse
import os
import statistics
import warnings

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from flops import (StepWorkers, block_macs, default_precision, matmul_peak, peak_fractions, print_machine,
                   serve_steps, stem_macs)  # benchmarks/flops.py
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.mae import MAE, MAEConfig
from sslvit.train.compiled import compile_objective
from sslvit.runtime.cpu_allocator import keep_freed_memory
from sslvit.train.optim import build_adamw

try:
    import lightly
    from lightly.models import utils as lutils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
except ImportError:
    lightly = None

N, KEEP, D, DEPTH, DD, DDEPTH, PATCH_DIM = 196, 49, 384, 12, 512, 8, 16 * 16 * 3


def step_flops(batch: int, stem: str, stem_patches: int, pred_patches: int) -> int:
    fwd = (stem_patches * stem_macs(stem, D) + DEPTH * block_macs(1 + KEEP, D) + (1 + KEEP) * D * DD
           + DDEPTH * block_macs(N + 1, DD) + pred_patches * DD * PATCH_DIM)
    return 3 * 2 * batch * fwd


class LightlyMAE(nn.Module):
    """lightly's MAE example (examples/pytorch/mae.py) at ViT-S/16 with a 512 x 8 x 16 decoder."""

    def __init__(self):
        super().__init__()
        vit = timm.create_model("vit_small_patch16_224")
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        with warnings.catch_warnings():  # lightly 1.6 deprecates MAEDecoderTIMM (same blocks)
            warnings.simplefilter("ignore")
            self.decoder = MAEDecoderTIMM(
                num_patches=vit.patch_embed.num_patches, patch_size=self.patch_size, embed_dim=vit.embed_dim,
                decoder_embed_dim=DD, decoder_depth=DDEPTH, decoder_num_heads=16, mlp_ratio=4.0,
                proj_drop_rate=0.0, attn_drop_rate=0.0, mask_token=nn.Parameter(torch.zeros(1, 1, DD)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        idx_keep, idx_mask = lutils.random_token_mask((B, self.sequence_length), mask_ratio=0.75)
        x = self.decoder.embed(self.backbone.encode(images=images, idx_keep=idx_keep))
        x_masked = lutils.repeat_token(self.decoder.mask_token, (B, self.sequence_length))
        x_masked = lutils.set_at_index(x_masked, idx_keep, x.type_as(x_masked))
        pred = self.decoder.predict(lutils.get_at_index(self.decoder.decode(x_masked), idx_mask))
        target = lutils.get_at_index(lutils.patchify(images, self.patch_size), idx_mask - 1)
        return F.mse_loss(pred, lutils.normalize_mean_var(target))  # norm-pix MSE, masked patches


def sslvit_mae(stem: str) -> MAE:
    cfg = BackboneConfig(size="small", patch_size=16, img_size=224, stem=stem)
    return MAE(build_backbone(cfg), MAEConfig(mask_ratio=0.75, norm_pix_loss=True, decoder_dim=DD,
                                              decoder_depth=DDEPTH, decoder_heads=16))


def adamw(model: nn.Module, lr: float, **impl) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05, **impl)


def make_step(model: nn.Module, opt, imgs: torch.Tensor, bf16: bool = False):
    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(imgs)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def bf16_check(batch: int, lr: float, kw: dict, steps: int = 5) -> None:
    imgs = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    curves = {}
    for bf16 in (False, True):
        torch.manual_seed(0)  # same init and same masks
        model = sslvit_mae("hmlp")
        step = make_step(model, adamw(model, lr, **kw), imgs, bf16)
        curves[bf16] = [step() for _ in range(steps)]
    rel = max(abs(a - b) / abs(a) for a, b in zip(curves[False], curves[True]))
    print(f"bf16 check ({steps} steps, fixed batch/seed): fp32 {['%.5f' % v for v in curves[False]]}")
    print(f"                                        bf16 {['%.5f' % v for v in curves[True]]}  "
          f"max rel diff {rel:.2e}")


CONFIGS = {  # name -> (builder, stem, precision, keep_freed_memory)
    "sslvit hmlp fp32": ("sslvit", "hmlp", "fp32", True),
    "sslvit linear fp32": ("sslvit", "linear", "fp32", True),
    "sslvit hmlp bf16": ("sslvit", "hmlp", "bf16", True),
    "sslvit hmlp fp32 compiled": ("sslvit", "hmlp", "fp32", True),  # train.compile inductor
    "sslvit hmlp bf16 compiled": ("sslvit", "hmlp", "bf16", True),
    "lightly fp32": ("lightly", "linear", "fp32", False),
    "lightly bf16": ("lightly", "linear", "bf16", False),  # what Lightning's bf16-mixed gives its users
    "lightly fp32 + sslvit allocator": ("lightly", "linear", "fp32", True),
}


def worker(name: str, batch: int, threads: int) -> None:
    """One configuration in its own process, as its library runs it: sslvit with the training
    loop's CPU allocator setting (``keep_freed_memory``) and optimizer (``build_adamw``: fused
    AdamW, no decay on 1-D params and tokens); lightly with glibc's defaults and torch's default
    AdamW, as its example runs."""
    kind, stem, precision, tuned = CONFIGS[name]
    if tuned:
        assert keep_freed_memory(), "glibc mallopt not available here"
    torch.set_num_threads(threads)
    lr = 1.5e-4 * batch / 256
    torch.manual_seed(0)
    imgs = torch.randn(batch, 3, 224, 224)
    if kind == "sslvit":
        model = sslvit_mae(stem)
        opt = build_adamw(model, lr, 0.05, (0.9, 0.95))
        if name.endswith("compiled"):  # compiled on the first (untimed warm-up) step
            compile_objective(model, "inductor")
    else:
        model = LightlyMAE()
        opt = adamw(model, lr)
    serve_steps(make_step(model, opt, imgs, bf16=precision == "bf16"))


def profile(batch: int, threads: int) -> None:
    """Where the sslvit step's time goes (torch.profiler, one step after two warm-up steps), and
    the fraction of the fp32 peak the step would reach if everything but the matmuls and the
    attention kernels took no time at all: the ceiling for this step on this CPU."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = sslvit_mae("hmlp")
    step = make_step(model, build_adamw(model, 1.5e-4 * batch / 256, 0.05, (0.9, 0.95)),
                     torch.randn(batch, 3, 224, 224))
    step()
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    peak = matmul_peak(torch.float32)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    groups = {"matmul (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention kernels (SDPA fwd + bwd)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                                     "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
              "GELU fwd + bwd": ("aten::gelu", "aten::gelu_backward"),
              "copies": ("aten::copy_",)}
    spent = {g: sum(e.self_cpu_time_total for e in events if e.key in names) / 1e6 for g, names in groups.items()}
    print(f"profiled step: {total:.2f} s (profiler's self-time sum)")
    for g, t in spent.items():
        print(f"  {g:36s} {t:6.2f} s  {t / total:5.1%}")
    print(f"  {'everything else':36s} {total - sum(spent.values()):6.2f} s  {1 - sum(spent.values()) / total:5.1%}")
    core = spent["matmul (mm, addmm, bmm)"] + spent["attention kernels (SDPA fwd + bwd)"]
    flops = step_flops(batch, "hmlp", KEEP, N)
    print(f"ceiling with zero time outside matmuls and attention: {flops / core / 1e9:.1f} GFLOP/s = "
          f"{flops / core / peak:.0%} of the fp32 peak ({peak / 1e9:.1f} GFLOP/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="only profile sslvit's step and print its ceiling")
    ap.add_argument("--bf16-check", action="store_true",
                    help="compare 5 steps' losses under bf16 autocast and fp32 even without native bf16 "
                         "(emulated: about 6 minutes at batch 4 on 2 cores)")
    ap.add_argument("--compile", action="store_true",
                    help="add sslvit configurations under train.compile inductor (each compiles for 1-2 min "
                         "in its warm-up step)")
    ap.add_argument("--only", help="comma-separated configuration names to run (each worker holds about 4 GB "
                                   "at batch 32: on 24 GB run at most 5 at once)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.threads)
    if args.profile:
        return profile(args.batch, args.threads)
    torch.set_num_threads(args.threads)
    B = args.batch
    bf16_ok = print_machine(f"timm {timm.__version__} | lightly {lightly.__version__ if lightly else '-'} | "
                            f"batch {B}, steps {args.steps} (+{args.warmup} warm-up)")
    if lightly is None:
        print("lightly is not importable: set up the benchmark venv (see this file's docstring). "
              "Only the sslvit configurations run.")

    peak = {"fp32": matmul_peak(torch.float32)}
    if bf16_ok:
        peak["bf16"] = matmul_peak(torch.bfloat16)
    else:
        print("bf16 matmul peak: skipped (no native bf16 support; bf16 matmul is pathologically slow here)")
    names = [n for n in CONFIGS if (bf16_ok or "bf16" not in n) and (lightly or "lightly" not in n)
             and (args.compile or "compiled" not in n) and (not args.only or n in args.only.split(","))]
    flops = {n: step_flops(B, "hmlp", KEEP, N) if "hmlp" in n else
             step_flops(B, "linear", KEEP, N) if n.startswith("sslvit") else step_flops(B, "linear", N, N - KEEP)
             for n in names}
    print("one process per configuration, stepped in lockstep: " + ", ".join(names))

    workers = StepWorkers(__file__, names, ["--batch", str(B), "--threads", str(args.threads)])
    try:
        results = workers.time(args.steps, args.warmup)
    finally:
        workers.close()
    peak["fp32"] = max(peak["fp32"], matmul_peak(torch.float32))  # best of before and after

    print("\npeak matmul 2048^3: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
    med = {name: statistics.median(t for t, _ in rows) for name, rows in results.items()}
    for name in names:
        fps = flops[name] / med[name]
        faults = statistics.median(f for _, f in results[name])
        print(f"{name:32s} median {med[name]:6.2f} s/step  {B / med[name]:6.2f} img/s  "
              f"{flops[name] / 1e12:.3f} TFLOP/step  {fps / 1e9:6.1f} GFLOP/s ({peak_fractions(fps, peak)})  "
              f"{faults / 1e3:6.0f}k page faults/step  [steps: {' '.join(f'{t:.2f}' for t, _ in results[name])}]")
    summary(med, flops, peak)
    if bf16_ok or args.bf16_check:
        b = min(B, 8 if bf16_ok else 4)
        bf16_check(b, 1.5e-4 * b / 256, {"fused": True})


def summary(med: dict, flops: dict, peak: dict) -> None:
    """The ratios the goals are stated in, from this one run's medians."""
    if "sslvit hmlp fp32" not in med:
        return
    default = f"sslvit hmlp {default_precision(med['sslvit hmlp fp32'], med.get('sslvit hmlp bf16'))}"
    print(f"\nsslvit default: '{default}' (train.precision auto's rule on this run's timings)")
    if "lightly fp32" in med:
        lt = med["lightly fp32"]
        best = min((n for n in med if n in ("lightly fp32", "lightly bf16")), key=med.get)
        print(f"sslvit hmlp fp32 / lightly fp32:   {lt / med['sslvit hmlp fp32']:.2f}x  (goal >= 1.1x)")
        if "sslvit linear fp32" in med:
            print(f"sslvit linear fp32 / lightly fp32: {lt / med['sslvit linear fp32']:.2f}x  (goal >= 1.1x)")
        print(f"sslvit default / lightly fp32: {lt / med[default]:.2f}x  (goal >= 1.8x)")
        if "lightly bf16" in med:
            print(f"sslvit default / lightly bf16: {med['lightly bf16'] / med[default]:.2f}x")
        print(f"sslvit default / lightly at its best ({best}): {med[best] / med[default]:.2f}x  (goal >= 1.3x)")
        lta = med.get("lightly fp32 + sslvit allocator")
        if lta:
            print(f"  of which the step code (both with sslvit's allocator setting): sslvit hmlp fp32 "
                  f"{lta / med['sslvit hmlp fp32']:.2f}x; the allocator setting alone (lightly with / without): "
                  f"{lt / lta:.2f}x")
    for prec, goal in (("fp32", 0.8), ("bf16", 0.7)):
        for name in (f"sslvit hmlp {prec}", f"sslvit hmlp {prec} compiled"):
            if name in med and prec in peak:
                print(f"{name} at {flops[name] / med[name] / peak[prec]:.0%} of the {prec} matmul peak "
                      f"(goal >= {goal:.0%})")
    for prec in ("fp32", "bf16"):
        if f"sslvit hmlp {prec} compiled" in med:
            print(f"train.compile inductor, {prec}: "
                  f"{med[f'sslvit hmlp {prec}'] / med[f'sslvit hmlp {prec} compiled']:.2f}x "
                  "the eager step")


if __name__ == "__main__":
    main()
